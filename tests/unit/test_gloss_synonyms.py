"""Near-synonyms in the dictionary bridge: an English word also finds the Chinese words whose short glosses share it
("usage" -> 使用量 where the dictionary's own "usage" is 用法), for English questions, rarest first, a few."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import pytest

from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.embed.embedder import HashEmbedder
from rag.index import bridge as bridge_module
from rag.index.bridge import Dictionary
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from tests.conftest import write_corpus

# CC-CEDICT's format, entries written for this test.
CEDICT = """\
用法 用法 [yong4 fa3] /usage/
使用量 使用量 [shi3 yong4 liang4] /volume of use/usage amount/
用量 用量 [yong4 liang4] /quantity used; usage; consumption; dose/
使用權 使用权 [shi3 yong4 quan2] /usage rights/
說明書 说明书 [shuo1 ming2 shu1] /a booklet on the correct usage of a product and its parts/
用 用 [yong4] /to use/usage/
磁盤 磁盘 [ci2 pan2] /(computer) disk/
"""


@pytest.fixture
def dictionary() -> Dictionary:
    return Dictionary.from_cedict_lines(CEDICT.splitlines())


def test_a_gloss_part_between_semicolons_is_a_gloss(dictionary: Dictionary) -> None:
    assert dictionary.to_chinese["usage"] == ("用法", "用量")
    assert dictionary.to_chinese["dose"] == ("用量",)


def test_headwords_whose_short_glosses_hold_the_word_are_its_near_synonyms(dictionary: Dictionary) -> None:
    assert set(dictionary.sharing["usage"]) == {"用法", "使用量", "用量", "使用权"}  # 说明书's gloss is too long, 用 one char
    assert "usage" not in dictionary.sharing.get("booklet", ())


def test_an_english_question_gains_near_synonyms_the_index_holds_rarest_first_a_few(dictionary: Dictionary) -> None:
    idf = {"用法": 1.0, "用量": 1.5, "使用量": 4.0, "使用权": 2.0}
    words = dictionary.bridge_query("Show inode usage", idf.get).split()
    assert words == ["show", "inode", "usage", "用量", "用法", "使用量", "使用权"]  # 2 near-synonyms, not in the gloss
    assert dictionary.bridge_query("Show inode usage", {"用法": 1.0}.get).split()[-1] == "用法"  # held ones only
    assert dictionary.bridge_query("usages", {"使用量": 4.0}.get).split() == ["usages", "使用量"]  # base form


def test_a_chinese_question_gets_no_near_synonyms_for_its_english_words(dictionary: Dictionary) -> None:
    known = {"用法": 1.0, "使用量": 4.0}.get
    assert "使用量" not in dictionary.bridge_query("df 的 usage 是什么", known).split()  # all its Chinese is stopwords
    assert dictionary.bridge_query("df 的 usage 是什么", known).split() == ["df", "usage", "用法"]


def test_an_english_question_finds_the_chinese_page_that_uses_the_near_synonym(
        tmp_path: Path, cfg: RagConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    dictionary_file = tmp_path / "cedict.txt.gz"
    with gzip.open(dictionary_file, "wt", encoding="utf-8") as handle:  # without 用量, which 使用量 holds for jieba
        handle.write("".join(line + "\n" for line in CEDICT.splitlines() if not line.startswith("用量")))
    docs = {"quota.txt": "quota 显示磁盘使用量和限额", "help.txt": "help 显示命令的用法和说明",
            "fstab.txt": "fstab 记录开机挂载的分区"}
    sync_folder(write_corpus(tmp_path / "man", docs), cfg, HashEmbedder())
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())
    retriever = Retriever(index, replace(cfg.retrieve, bridge=str(dictionary_file), unknown_name_min_chars=0,
                                         block_weight=0))
    question = "Which command shows how much disk space is in use? I mean the usage per user."
    assert retriever.search(question, top_k=1, mode="bm25")[0].chunk.source == "quota.txt"
    monkeypatch.setattr(bridge_module, "NEAR_PER_WORD", 0)
    assert retriever.search(question, top_k=1, mode="bm25")[0].chunk.source != "quota.txt"
