"""Retriever behaviour: modes, fusion, thresholds, the LangChain adapter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rag.answer.retrieve import Retriever, fuse
from rag.core.config import RagConfig, RetrieveConfig
from rag.core.errors import ConfigError
from rag.embed.embedder import HashEmbedder
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from rag.lc import KnowledgeBaseRetriever


@pytest.fixture
def retriever(corpus: Path, cfg: RagConfig) -> Retriever:
    sync_folder(corpus, cfg, HashEmbedder())
    return Retriever(KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder()), cfg.retrieve)


def test_rrf_fusion_rewards_agreement() -> None:
    cfg = RetrieveConfig()
    fused = fuse([(1, 0.9), (2, 0.8), (3, 0.7)], [(3, 9.0), (4, 5.0)], cfg)
    assert [i for i, _ in fused][:1] == [3]  # ranked by both
    assert {i for i, _ in fused} == {1, 2, 3, 4}
    weighted = fuse([(1, 0.9), (2, 0.1)], [(2, 3.0), (1, 1.0)], replace(cfg, fusion="weighted", bm25_weight=2.0))
    assert weighted[0][0] == 2


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_every_mode_finds_the_answer(retriever: Retriever, mode: str) -> None:
    hits = retriever.search("年假需要提前几天申请", mode=mode)
    assert hits and hits[0].chunk.source == "hr/年假.md"
    assert len(hits) <= retriever.cfg.top_k
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))


def test_hybrid_hits_carry_both_scores(retriever: Retriever) -> None:
    hit = retriever.search("WireGuard VPN gateway")[0]
    assert hit.chunk.source == "en/vpn.md"
    assert hit.dense_score is not None and hit.bm25_score is not None


def test_threshold_returns_nothing_for_unrelated_questions(retriever: Retriever) -> None:
    assert retriever.search("量子色动力学的渐近自由", score_threshold=0.5, bm25_threshold=3.0) == []
    assert retriever.search("年假 OA 系统 申请", score_threshold=0.05, bm25_threshold=1.0)


def test_empty_query_and_bad_mode(retriever: Retriever) -> None:
    assert retriever.search("   ") == []
    with pytest.raises(ConfigError, match="retrieve.mode='fuzzy' is not one of dense, bm25, hybrid"):
        retriever.search("x", mode="fuzzy")
    with pytest.raises(ConfigError, match="retrieve.candidates=2 must be at least retrieve.top_k=5"):
        Retriever(retriever.index, replace(retriever.cfg, candidates=2))


def test_langchain_adapter(retriever: Retriever) -> None:
    docs = KnowledgeBaseRetriever(retriever=retriever, k=2).invoke("打印机驱动怎么装")
    assert len(docs) == 2
    assert docs[0].metadata["source"] == "运维/打印机.txt" and "驱动" in docs[0].page_content


class _PreferSource:
    """A stand-in reranker: scores 1.0 for texts containing ``marker``; records what it was asked."""

    def __init__(self, marker: str) -> None:
        self.marker, self.calls = marker, []  # type: ignore[var-annotated]

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.calls.append((query, len(texts)))
        return [1.0 if self.marker in t else 0.0 for t in texts]


def test_reranker_reorders_the_candidates_and_sets_rerank_scores(corpus: Path, cfg: RagConfig) -> None:
    sync_folder(corpus, cfg, HashEmbedder())
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())
    plain = Retriever(index, replace(cfg.retrieve, top_k=3)).search("年假需要提前几天申请")
    assert plain[0].chunk.source == "hr/年假.md"
    stub = _PreferSource("WireGuard")
    reranked = Retriever(index, replace(cfg.retrieve, top_k=3, rerank_candidates=10), reranker=stub)
    hits = reranked.search("年假需要提前几天申请")
    assert len(hits) <= 3 and stub.calls and stub.calls[0][1] > 3  # it saw more candidates than it returns
    assert all(h.rerank_score is not None and h.score == h.rerank_score for h in hits)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    assert "WireGuard" in hits[0].chunk.text  # the reranker's favourite (a candidate here) leads, not 年假.md


def test_cross_encoder_reranker_loads_a_local_folder_and_scores(tmp_path: Path) -> None:
    import shutil

    from transformers import BertConfig, BertForSequenceClassification

    from rag.answer.retrieve import CrossEncoderReranker
    from rag.core.config import EmbedConfig
    from tests.unit.test_embed import build_tiny_st

    st = build_tiny_st(tmp_path / "st")  # its root holds a BERT config and a WordPiece tokenizer
    folder = tmp_path / "tiny-reranker"
    config = BertConfig.from_pretrained(str(st), num_labels=1)
    BertForSequenceClassification(config).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (st / name).is_file():
            shutil.copy(st / name, folder / name)
    reranker = CrossEncoderReranker(str(folder), EmbedConfig(source="local"))
    scores = reranker.score("年假 申请", ["年假需要提前三天申请", "VPN 网关地址", "食堂开放时间"])
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert scores == reranker.score("年假 申请", ["年假需要提前三天申请", "VPN 网关地址", "食堂开放时间"])
