"""Gloss parts in the dictionary bridge: CC-CEDICT lists synonyms inside one gloss between semicolons ("quantity
used; usage; consumption; dose"); each part is a gloss of its own, so "usage" also finds 用量 (and the man page that
says 使用量, which jieba's search mode cuts into 使用 / 用量 / 使用量)."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import pytest

from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.embed.embedder import HashEmbedder
from rag.index.bridge import Dictionary
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from tests.conftest import write_corpus

# CC-CEDICT's format, entries written for this test.
CEDICT = """\
用法 用法 [yong4 fa3] /usage/
使用量 使用量 [shi3 yong4 liang4] /volume of use/usage amount/
用量 用量 [yong4 liang4] /quantity used; usage; consumption; dose/
存檔 存档 [cun2 dang4] /to file; to save/archive/
說明書 说明书 [shuo1 ming2 shu1] /a booklet on the correct usage; of a product/
"""


@pytest.fixture
def dictionary() -> Dictionary:
    return Dictionary.from_cedict_lines(CEDICT.splitlines())


def test_each_part_of_a_gloss_between_semicolons_is_a_gloss(dictionary: Dictionary) -> None:
    assert dictionary.to_chinese["usage"] == ("用法", "用量")
    assert dictionary.to_chinese["dose"] == ("用量",)
    assert dictionary.to_chinese["save"] == ("存档",)  # "to" is stripped from each part
    assert "correct usage" not in dictionary.to_chinese  # a part of more than two words is still no gloss
    assert dictionary.to_chinese["usage amount"] == ("使用量",)


def test_an_english_word_gains_the_headwords_of_gloss_parts_the_index_holds(dictionary: Dictionary) -> None:
    assert dictionary.bridge_query("inode usage", {"用法": 1.0, "用量": 3.0}.get).split() == [
        "inode", "usage", "用量", "用法"]  # rarest first


def test_an_english_question_finds_the_chinese_page_through_a_gloss_part(tmp_path: Path, cfg: RagConfig) -> None:
    for name, text in (("whole", "".join(line + "\n" for line in CEDICT.splitlines() if "用量" not in line)),
                       ("parts", CEDICT)):
        with gzip.open(tmp_path / f"{name}.txt.gz", "wt", encoding="utf-8") as handle:
            handle.write(text)
    docs = {"quota.txt": "quota 显示磁盘使用量和限额", "fstab.txt": "fstab 记录开机挂载的分区",
            "mount.txt": "mount 挂载文件系统，选项见 fstab"}
    sync_folder(write_corpus(tmp_path / "man", docs), cfg, HashEmbedder())
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())
    question = "Which command shows the usage per user?"
    found = {}
    for name in ("whole", "parts"):
        retriever = Retriever(index, replace(cfg.retrieve, bridge=str(tmp_path / f"{name}.txt.gz"),
                                             unknown_name_min_chars=0, block_weight=0))
        found[name] = [h.chunk.source for h in retriever.search(question, top_k=3, mode="bm25")]
    assert found["parts"][:1] == ["quota.txt"]
    assert "quota.txt" not in found["whole"]  # without 用量's gloss part nothing links "usage" to the page
