"""Option-aware keyword tokens: ``-H`` is not ``-h``, in the stored chunk tokens, in the question, in prose and in
block rescoring; file-name words in every chunk's tokens; an index whose tokens an older tokenizer made is
re-tokenised on open and on the next ingest."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest

from rag.answer.blocks import best_block_weight
from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.embed.embedder import HashEmbedder
from rag.index.bm25 import BM25, STOPWORDS, TOKENIZER_VERSION, chunk_tokens, name_words, option_tokens, tokenize
from rag.index.docstore import DocStore
from rag.index.layout import DOCSTORE
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from tests.conftest import write_corpus


def test_options_keep_their_case_and_dash_and_words_stay_lower_case() -> None:
    assert tokenize("df -h 和 df -H 的区别") == ["df", "-h", "h", "df", "-H", "h", "区别"]
    assert tokenize("-H, --si 以 1000 为幂输出大小") == ["-H", "h", "--si", "si", "1000", "幂", "输出", "大小"]
    assert tokenize("find . -maxdepth 2 -exec rm {} ;") == ["find", "-maxdepth", "maxdepth", "2", "-exec", "exec", "rm"]
    assert tokenize("chmod +x run.sh") == ["chmod", "+x", "x", "run.sh"]
    assert tokenize("Tar --Delete") == ["tar", "--delete", "delete"]  # long options: one case, as they are written


def test_words_with_inner_dashes_and_values_are_no_options() -> None:
    assert option_tokens("dpkg-reconfigure u+x 2024-01-01 c++ e-mail a-z -1 x--y") == set()
    assert tokenize("dpkg-reconfigure 4.3.1 c++ u+x") == ["dpkg-reconfigure", "4.3.1", "c++", "u+x"]


def test_format_sequences_keep_their_case() -> None:
    assert tokenize("date +%F") == ["date", "%F", "f"]
    assert option_tokens("%Y-%m-%d 和 %+4Y, 100% 完成") == {"%Y", "%m", "%d", "%+4Y"}


def test_typeset_hyphens_read_as_the_ascii_dash() -> None:
    assert option_tokens("\u2010H \u2212h \uff0dL") == {"-H", "-h", "-L"}  # groff hyphen, minus, full-width


@pytest.mark.parametrize(("question", "option"), [
    ("df 的 H 选项是干什么的？", "-H"),
    ("df 加上参数 h 会怎样？", "-h"),
    ("What does the H flag of df do?", "-H"),
    ("what does the h option do?", "-h"),
    ("What is the 'h' flag for?", "-h"),
    ("Is the H option of du the same?", "-H"),
    ("Which is the --HELP switch?", "--help"),
])
def test_an_option_named_in_prose_is_that_option(question: str, option: str) -> None:
    assert option in tokenize(question)


@pytest.mark.parametrize("question", ["Is there a flag for that?", "A option would help", "I flag it", "Linux 选项"])
def test_articles_pronouns_and_longer_words_before_option_are_no_options(question: str) -> None:
    assert option_tokens(question) == set()


# v2 kept the -h chunk first for a -H question: both options were the word "h", and the -h chunk is shorter.
DF = {
    "df-human.txt": "-h, --human-readable 以 1024 为幂显示大小",
    "df-si.txt": "-H, --si 以 1000 为幂输出大小，例如 1.1G，用于磁盘厂商的单位",
    "du.txt": "du 统计目录占用的磁盘空间，--max-depth 限制深度",
}


def _v2_tokens(text: str) -> str:
    """What the previous release (jieba-search-v2) stored: every option lower-cased to its bare letters."""
    text = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    for run in re.findall(r"[\u3400-\u9fff\uf900-\ufaff]+|[^\u3400-\u9fff\uf900-\ufaff]+", text):
        if re.match(r"[\u3400-\u9fff]", run):
            tokens.extend(tokenize(run))  # jieba over a CJK run: unchanged since v2
        else:
            tokens.extend(w for w in re.findall(r"[a-z0-9][a-z0-9_.+#-]*[a-z0-9+#]|[a-z0-9]", run) if w not in STOPWORDS)
    return " ".join(tokens)


def test_bm25_ranks_the_option_asked_about_first_and_the_old_tokens_did_not() -> None:
    texts = list(DF.values())
    new = BM25([0, 1, 2], [" ".join(tokenize(t)) for t in texts])
    old = BM25([0, 1, 2], [_v2_tokens(t) for t in texts])
    for question in ("df -H 是什么意思？", "df 的 H 选项是什么意思？", "What does the -H flag do?"):
        assert new.search(question, 3)[0][0] == 1, question
    assert new.search("df -h 是什么意思？", 3)[0][0] == 0
    assert old.search("df -H 是什么意思？", 3)[0][0] == 0  # the confusion this tokenizer removes


def test_option_tokens_do_not_make_a_chunk_longer_for_bm25() -> None:
    bm25 = BM25([1, 2], [" ".join(tokenize("-H, --si 输出大小")), "h si 输出 大小"])
    assert bm25.lengths.tolist() == [4.0, 4.0]  # -H and --si repeat the words h and si
    assert bm25.search("h si", 2)[0][1] == pytest.approx(bm25.search("h si", 2)[1][1])


def test_block_rescoring_finds_an_option_only_in_its_own_case() -> None:
    text = "-h, --human-readable\n    1024 为幂\n\n-H, --si\n    1000 为幂"
    assert best_block_weight(text, {"-H": 2.0, "1000": 1.0}) == 3.0
    assert best_block_weight(text, {"-H": 2.0, "1024": 1.0}) == 2.0  # -H and 1024 are in different blocks
    assert best_block_weight("-h 1024", {"-H": 2.0}) == 0.0
    assert best_block_weight("--HELP 显示帮助", {"--help": 1.0}) == 1.0  # long options in either case
    assert best_block_weight("dpkg-H 不是选项", {"-H": 1.0}) == 0.0
    assert best_block_weight("date +%F", {"%F": 1.0}) == 1.0 and best_block_weight("date +%f", {"%F": 1.0}) == 0.0


def _store_v2_tokens(directory: Path) -> None:
    """Make the index look built by the previous release: its tokens and its tokenizer version."""
    from rag.ingest.split import embedding_text

    ds = DocStore(directory / DOCSTORE)
    try:
        with ds.transaction():
            ids, _ = ds.all_tokens()
            chunks = ds.get_chunks(ids)
            ds.conn.executemany("UPDATE chunks SET tokens = ? WHERE id = ?",
                                [(_v2_tokens(embedding_text(chunks[i])), i) for i in ids])
            ds.set_meta("bm25_tokenizer", "jieba-search-v2")
    finally:
        ds.close()


def _first_source(index: KnowledgeIndex, question: str) -> str:
    retriever = Retriever(index, replace(index.cfg.retrieve, bridge="", unknown_name_min_chars=0))
    return retriever.search(question, top_k=1, mode="bm25")[0].chunk.source


def test_an_index_with_v2_tokens_is_retokenised_on_open_without_writing_and_stored_on_ingest(
        tmp_path: Path, cfg: RagConfig) -> None:
    directory = Path(cfg.index.dir)
    kb = write_corpus(tmp_path / "man", DF)
    sync_folder(kb, cfg, HashEmbedder())
    _store_v2_tokens(directory)
    store = directory / DOCSTORE
    ds = DocStore(store, readonly=True)
    ids, tokens = ds.all_tokens()
    names = {i: c.source for i, c in ds.get_chunks(ids).items()}
    ds.close()
    assert names[BM25(ids, tokens).search("df -H 是什么意思？", 1)[0][0]] == "df-human.txt"  # v2 tokens confuse them
    before = hashlib.sha256(store.read_bytes()).hexdigest()

    reader = KnowledgeIndex.open(directory, cfg, HashEmbedder())  # re-tokenises in memory, writes nothing
    assert _first_source(reader, "df -H 是什么意思？") == "df-si.txt"
    assert _first_source(reader, "df 的 H 选项") == "df-si.txt"
    reader.close()
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before

    report = sync_folder(kb, cfg, HashEmbedder())  # the next ingest stores the new tokens; nothing is re-embedded
    assert report.chunks_indexed == 0 and all(f.status == "unchanged" for f in report.files)
    ds = DocStore(store, readonly=True)
    with ds.snapshot():
        assert ds.get_meta("bm25_tokenizer") == TOKENIZER_VERSION == "jieba-search-v3"
        assert any("-H" in tokens.split() for tokens in ds.all_tokens()[1])
    ds.close()
    reopened = KnowledgeIndex.open(directory, cfg, HashEmbedder())
    assert _first_source(reopened, "df -H 是什么意思？") == "df-si.txt"
    assert reopened.manifest["bm25"]["tokenizer"] == TOKENIZER_VERSION
    reopened.close()


@pytest.mark.parametrize(("source", "words"), [
    ("man/df.1.txt", "df"), ("man/logind.conf.5.txt", "logind conf"), ("sect.remote-login.html", "sect remote login"),
    ("运维/磁盘管理.md", "磁盘管理"), ("kb\\VPN_guide.docx", "VPN guide"), ("README", "README"),
])
def test_name_words_drop_folders_extensions_and_man_sections(source: str, words: str) -> None:
    assert name_words(source) == words


def test_stored_tokens_hold_the_file_name_words_without_numbers() -> None:
    assert chunk_tokens("-H, --si", "man/df.1.txt").split() == ["-H", "h", "--si", "si", "df"]
    assert chunk_tokens("正文", "docs/2024-report.md").split() == ["正文", "report"]


MAN = {  # the option entries of df.1 never say "df"; the guide says "df -h"; -H is an option of many commands
    "man/df.1.txt": "DF(1) 用户命令\n\n名称\n    df - 报告文件系统空间使用情况\n\n概述\n    df [选项列表]... [文件列表]...\n\n"
                    "选项\n\n    -a, --all\n        包含伪文件系统\n\n    -h, --human-readable\n        以 1024 为幂显示大小\n\n"
                    "    -H, --si\n        以 1000 为幂输出大小（例，1.1G）\n",
    "guide/disks.txt": "磁盘快满时先用 df -h 看各分区的剩余空间，再用 du 找出占用最大的目录。",
    "man/grep.1.txt": "-H, --with-filename\n    为每个匹配打印文件名",
    "man/du.1.txt": "-H     和 --dereference-args（-D）等效",
    "man/ls.1.txt": "-H, --dereference-command-line\n    跟随命令行列出的符号链接",
    "man/cp.1.txt": "-H     跟随源文件中的命令行符号链接",
}


def test_a_question_naming_the_command_finds_its_option_entry(tmp_path: Path, cfg: RagConfig) -> None:
    sync_folder(write_corpus(tmp_path / "kb", MAN), cfg, HashEmbedder())
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())
    question = "df -H 是什么意思？"
    retriever = Retriever(index, replace(cfg.retrieve, bridge="", unknown_name_min_chars=0))
    first = retriever.search(question, top_k=1, mode="bm25")[0].chunk
    assert first.source == "man/df.1.txt" and "-H, --si" in first.text
    chunks = index.chunks([int(i) for i in index.bm25.ids]) if index.bm25 is not None else {}
    without_names = BM25(list(chunks), [" ".join(tokenize(c.text)) for c in chunks.values()])
    assert "-H, --si" not in chunks[without_names.search(question, 1)[0][0]].text  # what the name words fix
