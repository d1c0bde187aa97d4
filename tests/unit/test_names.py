"""The unknown-name refusal gate (rag.answer.names): proper names refuse, example values never do (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.answer.names import proper_names, unknown_names
from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.embed.embedder import HashEmbedder
from rag.index.bm25 import BM25, tokenize
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from tests.conftest import write_corpus

# A small command reference, Chinese and English, like the man pages of the unseen corpus in issue 15.
MAN_PAGES = {
    "cp.1.txt": "cp - 复制文件和目录\n用法：cp [选项]... 源文件 目标文件\n"
                "-a, --archive 等于 -dR --preserve=all，保留所有属性\n"
                "-u, --update 仅在源文件比目标文件新，或者目标文件不存在的情况下复制\n",
    "ls.1.txt": "ls - 列出目录内容\n-a, --all 不隐藏以 . 开头的项目\n-b, --escape 以 C 风格的转义序列表示不可打印的字符\n"
                "-c 配合 -lt：根据 ctime 排序并显示\n",
    "mount.8.txt": "mount - 挂载文件系统\n-t, --types 类型 指定要挂载的文件系统类型\n"
                   "-o, --options 以逗号分隔的挂载选项列表，例如 ro 表示只读挂载\n",
    "en/cp.1.txt": "cp - copy files and directories\n-f, --force if an existing destination file cannot be opened, "
                   "remove it and try again\n-i, --interactive prompt before overwrite\n",
}

# Answerable questions whose only "unknown" Latin words are example values, options, paths, versions, file-system
# types or ordinary words: the gate of 2026-11-25 refused every one of them.
ANSWERABLE = [
    "怎么把 a.txt 复制到 backup 目录，只在源文件更新时才复制？",  # a file name
    "ls -abc 这几个选项合在一起是什么意思？",  # an argument
    "怎么用 mount 挂载一个 btrfs 文件系统？",  # a file-system type, lower case
    "mount 挂载 NTFS 分区时怎么指定文件系统类型？",  # ... and as an acronym
    "cp 复制 /home/alice/docs 目录时怎么保留所有属性？",  # a path
    "升级到 v9.1 以后 cp 怎么只复制更新过的文件？",  # a version number
    "cp 的 --update 选项是什么意思？",  # an option the text writes the same way
    "Which cp option removes a destination file that cannot be opened, in a non-interactive script?",  # English
]


def test_proper_names_are_capitalised_words_not_values() -> None:
    assert proper_names("Kubernetes 集群里怎么把节点设置为不可调度？") == ["kubernetes"]
    assert proper_names("How do I set up a WireGuard tunnel between two servers?") == ["wireguard"]
    assert proper_names("怎么在 OpenRC 下开机启动 sshd？") == ["openrc"]  # lower-case commands are not names
    assert proper_names("Dorico contexts in lilypond?") == []  # capitalised only as the first word of the sentence
    assert proper_names("Is it true? Dorico reads them") == []  # ... of any sentence
    assert proper_names("LilyPond 能和 Dorico 互相导入吗", min_chars=7) == ["lilypond"]
    for question in ANSWERABLE:
        assert proper_names(question) == [], question
    for value in ("a.txt", "-abc", "--parallel", "/etc/fstab", "~/bin", "ext4", "v2.24.1", "MY_VAR", "NTFS",
                  "ERROR-level", "Node.js", "C:\\Temp", "user@host", "*.log", "x=1", "gp5"):
        assert proper_names(f"怎么处理 {value} 这个值？") == [], value
    assert proper_names('grep 怎么搜索 "Hello" 这个词？') == []  # a quoted literal
    assert proper_names("grep 怎么搜索“Hello”这个词？") == []


def test_unknown_names_need_the_name_absent_from_index_and_hits() -> None:
    bm25 = BM25([1, 2], ["lilypond contexts 导入 导出 systemd-logind", "handbook audience reads"])
    assert unknown_names("LilyPond 能和 Dorico 互相导入吗", bm25, []) == ["dorico"]
    assert unknown_names("LilyPond 能和 Dorico 互相导入吗", bm25, ["… Dorico …"]) == []  # a retrieved chunk has it
    assert unknown_names("Logind 默认允许多少个会话？", bm25, []) == []  # part of an indexed word
    assert unknown_names("How do contexts work in LilyPond with Dorico", bm25, []) == ["dorico"]
    # an English question whose words the corpus mostly lacks is a language gap, not a missing topic
    assert unknown_names("Which printer driver should I install for Epson", bm25, []) == []
    # question words are stopwords, never unknown (the page-load test's "Where is ... stored?" was refused)
    paper = BM25([1], ["spare printer paper stored cabinet b7"])
    assert tokenize("Where is spare printer paper stored?") == ["spare", "printer", "paper", "stored"]
    assert unknown_names("Where is spare printer paper stored?", paper, []) == []


@pytest.fixture
def man_retriever(tmp_path: Path, cfg: RagConfig) -> Retriever:
    sync_folder(write_corpus(tmp_path / "man", MAN_PAGES), cfg, HashEmbedder())
    return Retriever(KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder()), cfg.retrieve)


@pytest.mark.parametrize("question", ANSWERABLE)
def test_example_values_never_turn_an_answerable_question_into_no_hits(man_retriever: Retriever,
                                                                       question: str) -> None:
    assert man_retriever.search(question), question


def test_a_product_the_index_never_mentions_is_still_refused(man_retriever: Retriever) -> None:
    assert man_retriever.search("Kubernetes 集群里怎么复制文件到节点？") == []
    assert man_retriever.search("怎么用 cp 把目录复制到 Dropbox 里？") == []
    assert man_retriever.search("How do I copy directories into Dropbox with cp?") == []
    assert man_retriever.search("How do I copy directories into Dropbox with cp?", unknown_name_min_chars=0)
