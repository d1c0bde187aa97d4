"""BM25 tokenisation, ranking, the unknown-name refusal gate, and indexes built with an older tokenizer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.core.errors import ConfigError
from rag.embed.embedder import HashEmbedder
from rag.index.bm25 import BM25, TOKENIZER_VERSION, current_tokens, tokenize
from rag.index.docstore import DocStore
from rag.index.layout import DOCSTORE
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder


def test_tokens_of_mixed_text() -> None:
    # jieba only sees the CJK runs: version numbers and hyphenated commands stay whole, search mode adds sub-words
    assert tokenize("LilyPond 学习手册: 4.3.1 Contexts，用 dpkg-reconfigure 配置磁盘空间") == [
        "lilypond", "学习", "手册", "4.3.1", "contexts", "用", "dpkg-reconfigure", "配置", "磁盘", "空间", "磁盘空间"]
    assert tokenize("在 Debian 上怎么搭建 Kubernetes 集群？") == ["debian", "搭建", "kubernetes", "集群"]


def test_english_words_are_cut_the_same_in_chinese_and_english_text() -> None:
    # v1 ran jieba over the whole text when it held any CJK, so "4.3.1" became "4.3" + "1" only in Chinese chunks
    assert tokenize("见 4.3.1 节的 dpkg-reconfigure") == ["见", "4.3.1", "节", "dpkg-reconfigure"]
    assert tokenize("see section 4.3.1 dpkg-reconfigure") == ["see", "section", "4.3.1", "dpkg-reconfigure"]
    assert [t for t in tokenize("c++ 和 C# 的 nginx.conf") if t.isascii()] == ["c++", "c#", "nginx.conf"]


def test_bm25_ranks_and_scores() -> None:
    bm25 = BM25([10, 20, 30], ["磁盘 空间 不足 df", "lilypond 4.3.1 contexts", "磁盘 挂载 fstab 磁盘"])
    ranked = bm25.search("磁盘空间", 3)
    assert [i for i, _ in ranked] == [10, 30]  # 20 shares no token: not returned
    assert ranked[0][1] == pytest.approx(1.3988, abs=1e-4) and ranked[1][1] == pytest.approx(0.6301, abs=1e-4)
    assert [i for i, _ in bm25.search("4.3.1", 3)] == [20]
    assert bm25.search("kubernetes", 3) == []


@pytest.fixture
def retriever(corpus: Path, cfg: RagConfig) -> Retriever:
    sync_folder(corpus, cfg, HashEmbedder())
    return Retriever(KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder()), cfg.retrieve)


def test_retriever_refuses_a_question_naming_what_the_index_never_mentions(retriever: Retriever) -> None:
    assert retriever.search("服务器上怎么搭建 Kubernetes 集群？") == []
    assert retriever.search("服务器上怎么搭建 Kubernetes 集群？", unknown_name_min_chars=0)  # gate off: hits
    assert retriever.search("WireGuard 客户端怎么装？")[0].chunk.source == "en/vpn.md"  # a known name passes
    with pytest.raises(ConfigError, match="retrieve.unknown_name_min_chars=-1 must be 0 \\(off\\) or more"):
        Retriever(retriever.index, replace(retriever.cfg, unknown_name_min_chars=-1))


def _downgrade_tokens(directory: Path) -> None:
    """Make the index look built by an older tokenizer whose tokens disagree with today's."""
    ds = DocStore(directory / DOCSTORE)
    try:
        with ds.transaction():
            ds.conn.execute("UPDATE chunks SET tokens = 'zzz'")
            ds.set_meta("bm25_tokenizer", "jieba-search-v1")
    finally:
        ds.close()


def test_index_with_old_tokens_is_retokenised_on_open_and_on_ingest(corpus: Path, cfg: RagConfig) -> None:
    directory = Path(cfg.index.dir)
    sync_folder(corpus, cfg, HashEmbedder())
    fresh = KnowledgeIndex.open(directory, cfg, HashEmbedder())
    expected = {q: fresh.search_bm25(q, 5) for q in ("磁盘空间不足", "WireGuard VPN", "年假申请")}
    fresh.close()
    assert all(expected.values())

    _downgrade_tokens(directory)
    old = KnowledgeIndex.open(directory, cfg, HashEmbedder())  # reader: re-tokenises in memory, writes nothing
    assert {q: old.search_bm25(q, 5) for q in expected} == expected
    old.close()
    ds = DocStore(directory / DOCSTORE, readonly=True)
    assert ds.get_meta("bm25_tokenizer") == "jieba-search-v1" and set(ds.all_tokens()[1]) == {"zzz"}
    ds.close()

    report = sync_folder(corpus, cfg, HashEmbedder())  # ingest: stores the new tokens, nothing re-embedded
    assert report.chunks_indexed == 0 and all(f.status == "unchanged" for f in report.files)
    ds = DocStore(directory / DOCSTORE, readonly=True)
    with ds.snapshot():
        assert ds.get_meta("bm25_tokenizer") == TOKENIZER_VERSION
        assert ds.all_tokens() == current_tokens(ds) and "zzz" not in ds.all_tokens()[1]
    ds.close()
    reopened = KnowledgeIndex.open(directory, cfg, HashEmbedder())
    assert {q: reopened.search_bm25(q, 5) for q in expected} == expected
    assert reopened.manifest["bm25"]["tokenizer"] == TOKENIZER_VERSION
    reopened.close()
