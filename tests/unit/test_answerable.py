"""Whole sentences (PDF line breaks, chunk edges, headings) and the answerability decision, without an index."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from rag.answer.answerable import (
    _latin_stems,
    assess,
    candidate_sentences,
    compound_parts,
    covers,
    document_name,
    embedder_similarity,
    key_terms,
    reference_list,
)
from rag.answer.extractive import ExtractiveModel, previous_sentences
from rag.answer.sentences import is_whole_sentence, normalise, parent_text, segment
from rag.core.types import Chunk, Hit, Message

PDF_PAGE = ("2. 查看 IP 地址\n"
            "在命令提示符中运行 ipconfig /all。办公网的地址段是 10.8.0.0/16，正常获得的地址以 10.8 开头。如\n"
            "果地址以 169.254 开头，说明电脑没有从 DHCP 服务器获得地址，请先运行 ipconfig /release，再运\n"
            "行 ipconfig /renew 重新获取。\n"
            "3. 测试网关\n"
            "运行 ping 10.8.0.1。")


def test_pdf_line_breaks_are_joined_and_headings_told_apart() -> None:
    sentences = segment(PDF_PAGE)
    texts = [s.text for s in sentences]
    assert "如果地址以 169.254 开头，说明电脑没有从 DHCP 服务器获得地址，请先运行 ipconfig /release，" \
           "再运行 ipconfig /renew 重新获取。" in texts
    assert [s.text for s in sentences if s.heading] == ["2. 查看 IP 地址", "3. 测试网关"]
    english = ("Factory reset: press and hold the dial for 20 seconds until the ring light flashes red three times, "
               "then\nrelease it. A factory reset erases the Wi-Fi settings.\n6. Error codes\n"
               "When the thermostat detects a problem, it shows an error code on the screen and sends a\n"
               "notification to the Aurora Home app.")
    texts = [s.text for s in segment(english) if s.complete]
    assert texts[0].endswith("three times, then release it.")
    assert texts[-1] == ("When the thermostat detects a problem, it shows an error code on the screen and sends a "
                         "notification to the Aurora Home app.")
    assert "6. Error codes" not in texts
    assert is_whole_sentence(texts[-1], english) and not is_whole_sentence("sends a.", english)
    assert not is_whole_sentence("果地址以 169.254 开头，说明电脑没有从 DHCP 服务器获得地址。", PDF_PAGE)
    # a sentence in brackets ends with its punctuation inside them; a cut one stays a fragment
    nfs = "NFS 的设置如下。（这样可以只让某个网络组的成员访问 NFS。）然后重启服务。"
    assert is_whole_sentence("（这样可以只让某个网络组的成员访问 NFS。）", nfs)
    assert not is_whole_sentence("（这样可以只让某个网络组的成员）", nfs)


def test_a_sentence_cut_by_the_chunk_edge_is_taken_from_the_neighbouring_chunk() -> None:
    cut = PDF_PAGE.index("果地址以")
    first = Chunk(1, PDF_PAGE[:cut + 20], "net.pdf", 0, page=1, start=0, end=cut + 20)
    second = Chunk(2, PDF_PAGE[cut:], "net.pdf", 1, page=1, start=cut, end=len(PDF_PAGE))
    text, offset = parent_text(second, [first])
    assert text == PDF_PAGE and offset == cut
    model = ExtractiveModel()
    alone = model.answer("电脑的地址以 169.254 开头怎么办", [Hit(second, 1.0)])
    assert "果地址以" not in alone  # without its neighbour the cut sentence is left out, never quoted cut
    decision = assess("电脑的地址以 169.254 开头怎么办", [Hit(second, 1.0)], _Neighbours([first, second]))
    assert decision.answerable
    assert decision.support[0].text.startswith("如果地址以 169.254 开头") and decision.support[0].text.endswith("重新获取。")


class _Neighbours:
    """The part of an index the decision reads: idf (all words alike here) and neighbouring chunks."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks

    def idf(self, term: str) -> float | None:
        return 1.0

    def max_idf(self) -> float:
        return 1.0

    def neighbours(self, chunk: Chunk, reach: int = 1) -> list[Chunk]:
        return [c for c in self.chunks if c.source == chunk.source and 0 < abs(c.position - chunk.position) <= reach]


def test_key_terms_drop_question_words_and_keep_names_and_numbers() -> None:
    assert [t.text for t in key_terms("公司停车场每月停车费是多少？")] == ["公司", "停车场", "每月", "停车费"]
    assert [(t.text, t.neutral) for t in key_terms("How long is the Aurora X2 warranty?")] == [
        ("aurora", True), ("x2", True), ("warranty", False)]
    assert [t.text for t in key_terms("年假有几天？")] == ["年假"]
    # the kind of thing asked for is no topic: the answer names the option and need not say 参数 / option
    assert [t.text for t in key_terms("tar 处理 .xz 文件用哪个选项？")] == ["处理", "文件", "tar", "xz"]
    assert "option" not in [t.text for t in key_terms("Which option makes cp keep the timestamps?")]
    assert "选项" in [t.text for t in key_terms("这个选项有什么作用？")]  # not asked for here


def test_unrelated_sentences_do_not_answer_and_a_second_sentence_must_add_support() -> None:
    handbook = Hit(Chunk(1, "公司实行弹性上班制度，最晚到岗时间为 9:30。每月迟到累计 3 次以上的，由部门负责人进行提醒谈话。",
                         "员工手册.docx", 0), 1.0)
    common = _Neighbours([])
    common.idf = {"公司": 0.5, "每月": 1.0}.get  # type: ignore[method-assign]  # words the index has; 停车费 it lacks
    common.max_idf = lambda: 3.0  # type: ignore[method-assign]
    assert not assess("公司停车场每月停车费是多少？", [handbook], common).answerable
    vpn = Hit(Chunk(2, "同一个账号最多可以同时在 2 台设备上连接 VPN。连接后如果 60 分钟内没有任何网络流量，VPN 会自动断开。",
                    "faq.html", 0, heading=("VPN 连接",)), 1.0)
    decision = assess("同一个账号最多能在几台设备上连接 VPN？", [vpn, handbook])
    assert decision.answerable and [s.text for s in decision.support] == ["同一个账号最多可以同时在 2 台设备上连接 VPN。"]


def test_previous_answers_are_not_repeated_unless_asked_again() -> None:
    history = [Message("user", "VPN 服务器地址是什么？"), Message("assistant", "服务器地址填写 vpn.x.example。[1]")]
    assert previous_sentences(history, "那验证码呢？") == ["服务器地址填写 vpn.x.example。"]
    assert previous_sentences(history, "VPN 服务器地址是什么?") == []


def test_question_sets_of_the_answer_eval_are_well_formed() -> None:
    from pathlib import Path

    from rag.cli.eval import read_questions

    root = Path(__file__).resolve().parents[2] / "eval"
    unanswerable = read_questions(root / "dev_unanswerable.jsonl")
    assert len(unanswerable) >= 40 and not any(q.answerable for q in unanswerable)
    assert {q.split for q in unanswerable} == {"tune", "test"}
    dev2 = read_questions(root / "dev2_unanswerable.jsonl")
    assert len(dev2) >= 40 and not any(q.answerable for q in dev2) and {q.split for q in dev2} == {"tune", "test"}
    kb = read_questions(root / "kb_questions.jsonl")
    assert sum(q.answerable for q in kb) >= 20 and sum(not q.answerable for q in kb) >= 20


LS_PAGE = ("       -g     类似 -l，但不列出所有者\n\n"
           "       --group-directories-first\n"
           "              将目录排在文件前面；此选项可与   --sort   一起使用\n\n"
           "       -i, --inode\n"
           "              显示每个文件的索引编号（inode 号）\n\n"
           "       -s, --size\n"
           "              显示给每个文件分配的大小，单位为块\n")


def test_a_manual_page_option_and_its_description_are_one_sentence() -> None:
    sentences = [s for s in segment(LS_PAGE) if s.complete]
    texts = [s.text for s in sentences]
    assert "--group-directories-first 将目录排在文件前面；" in texts
    assert "-i, --inode 显示每个文件的索引编号（inode 号）" in texts
    assert not any(s.heading for s in segment(LS_PAGE))  # an option above its description is no heading
    assert is_whole_sentence("-i, --inode 显示每个文件的索引编号（inode 号）。", LS_PAGE)
    assert not is_whole_sentence("显示每个文件的索引编号（inode 号）。", LS_PAGE)  # the option belongs to it
    # other terms of a manual page's lists (output formats, operands) too; a section heading at the margin is none
    page = ("           json-pretty\n               将日志项按照JSON数据结构格式化， 但是每个字段一行。\n\n"
            "       ibs=bytes\n              一次读 bytes 字节。默认是512。\n\n"
            "NAME\n       ls - list directory contents\n")
    assert [(s.text, s.heading) for s in segment(page)] == [
        ("json-pretty 将日志项按照JSON数据结构格式化， 但是每个字段一行。", False), ("ibs=bytes 一次读 bytes 字节。", False),
        ("默认是512。", False), ("NAME", True), ("ls - list directory contents", True)]
    # a line that merely starts with a dash and is no option term above an indented description stays as it was
    assert [s.text for s in segment("- 一个列表项，没有更深的缩进\n- 另一个列表项，也没有缩进")] == [
        "- 一个列表项，没有更深的缩进", "- 另一个列表项，也没有缩进"]


def test_the_document_name_anchors_a_manual_page_that_never_repeats_it() -> None:
    assert document_name("man/ls.1.txt") == "ls" and document_name("docs/product_manual-en.pdf") == "product manual en"
    question = "ls 里显示每个文件的 inode 号是哪个参数？"
    page = Hit(Chunk(1, LS_PAGE, "man/ls.1.txt", 0), 1.0)
    decision = assess(question, [page])
    assert decision.answerable
    assert [s.text for s in decision.support][0] == "-i, --inode 显示每个文件的索引编号（inode 号）"
    # the same text in a document that is not about ls does not answer a question about ls
    assert not assess(question, [Hit(Chunk(1, LS_PAGE, "man/dir.1.txt", 0), 1.0)]).answerable
    # a dotted name keeps its dots; file-type, manual-section and language suffixes go
    assert document_name("man/journald.conf.5.txt") == "journald.conf"
    assert document_name("debian-reference/ch02.zh-cn.html") == "ch02" and document_name("x/员工手册.docx") == "员工手册"


def test_a_name_most_of_the_corpus_holds_is_its_subject_not_an_anchor() -> None:
    page = Hit(Chunk(1, "把 umask 设为 002 时，新建的文件对同组用户可写。", "debian-reference/ch01.html", 0), 1.0)
    question = "Debian 上 umask 设为 002 时新建的文件对同组用户可写吗？"
    rare = _Neighbours([])
    rare.idf = lambda term: 3.0  # type: ignore[method-assign]  # a word a twentieth of the chunks hold
    assert not assess(question, [page], rare).answerable  # Debian is a name the passage does not hold
    common = _Neighbours([])
    common.idf = lambda term: 0.4 if term == "debian" else 3.0  # type: ignore[method-assign]  # most chunks hold it
    decision = assess(question, [page], common)
    assert decision.answerable and "debian" in decision.missing


def test_a_question_with_three_names_may_say_one_of_them_otherwise() -> None:
    """assess(anchor_slack=1): with three or more names and numbers in the question, a passage that holds all but one
    ("Windows 9x" where the question says Win9x) can answer; with fewer names every one must be held, and
    anchor_slack=0 holds the gate as before."""
    page = Hit(Chunk(1, "Samba 默认使用 UTF-8 编码，但对老的客户端（DOS 和 Windows 9x/Me）使用 CP850 编码。",
                     "ref/ch08.html", 0), 1.0)
    three = "Samba 对 DOS 和 Win9x 这些老客户端默认用什么编码？"
    assert assess(three, [page], anchor_slack=1).answerable
    assert not assess(three, [page], anchor_slack=0).answerable
    two = "Samba 对 Win9x 这些老客户端默认用什么编码？"  # two names, one of them not in the passage
    assert not assess(two, [page], anchor_slack=1).answerable


class _Similar:
    """A stand-in embedder similarity: ``close`` sentences are 0.95 similar to any question, others 0.5."""

    def __init__(self, close: str) -> None:
        self.close, self.calls = close, 0

    def __call__(self, question: str, sentences: Sequence[str]) -> list[float]:
        self.calls += 1
        return [0.95 if self.close in s else 0.5 for s in sentences]


def test_the_opt_in_semantic_path_answers_a_paraphrase_whose_passage_holds_its_names() -> None:
    page = Hit(Chunk(1, LS_PAGE, "man/ls.1.txt", 0), 1.0)
    question = "ls 列出来的时候想让文件夹都放在最上面，怎么弄？"  # shares only ls and 文件 with the answer
    similar = _Similar("将目录排在文件前面")
    assert not assess(question, [page], similarity=similar).answerable and similar.calls == 0  # off by default
    decision = assess(question, [page], similarity=similar, min_similarity=0.9)
    assert decision.answerable and decision.semantic and decision.similarity == 0.95
    assert decision.support[0].text == "--group-directories-first 将目录排在文件前面；"
    # not similar enough, or coverage below semantic_min_coverage: refused
    assert not assess(question, [page], similarity=similar, min_similarity=0.96).answerable
    assert not assess(question, [page], similarity=similar, min_similarity=0.9, semantic_min_coverage=0.9).answerable
    # a name of the question that the passage lacks still refuses it, however similar a sentence is
    decision = assess("tree 列出来的时候想让文件夹都放在最上面，怎么弄？", [page], similarity=similar, min_similarity=0.9)
    assert not decision.answerable and "similarity 0.950" in decision.reason


def test_pieces_jieba_joins_weigh_as_their_characters_not_as_a_word_no_document_uses() -> None:
    index = _Neighbours([])
    index.idf = {"时": 1.0, "想": 2.0, "链接": 3.0, "相对路径": 4.0, "改": 6.0}.get  # type: ignore[method-assign]
    index.max_idf = lambda: 9.0  # type: ignore[method-assign]
    weights = {t.text: t.weight for t in key_terms("ln -s 时想让链接里存相对路径", index)}
    assert "时想" not in weights  # jieba's guess at 时 / 想 (function characters) is how the question is put
    only = next(t for t in key_terms("touch 只改访问时间", index) if t.text == "只改")
    assert only.weight == 3.0 and only.pieces == "改"  # 只 (only) weighs nothing, 改 (change) as itself
    assert weights["相对路径"] == 4.0 and weights["里存"] == 9.0  # 里 / 存 unknown to the index: weighs as unknown
    assert {t.text: t.weight for t in key_terms("公司停车场每月停车费是多少？", index)}["停车费"] == 9.0


def test_a_command_line_semicolon_inside_a_chinese_sentence_ends_nothing() -> None:
    text = "补丁必须有清晰的边界。你应该通过 dquilt pop -a; while quilt\npush; do quilt refresh; done 来验证这点。"
    assert [s.text for s in segment(text)][-1] == ("你应该通过 dquilt pop -a; while quilt push; do quilt refresh; done "
                                                   "来验证这点。")
    # in English a ";" before a lower-case word joins two clauses of one sentence; before a capital it may end one
    assert [s.text for s in segment("Keep the thermostat online; the update is\nretried. Next.")] == [
        "Keep the thermostat online; the update is retried.", "Next."]
    assert [s.text for s in segment("Use a semicolon; It ends here.")] == ["Use a semicolon;", "It ends here."]


class _CountingEmbedder:
    """Letter-count vectors, recording which texts it was asked to embed."""

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def _vector(self, text: str) -> np.ndarray:
        v = np.array([text.count(c) for c in "abcdefgh"], dtype=np.float32) + 0.1
        return v / np.linalg.norm(v)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.embedded += texts
        return np.stack([self._vector(t) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)


def test_sentence_similarity_embeds_each_sentence_once_across_questions(monkeypatch: pytest.MonkeyPatch) -> None:
    import rag.answer.answerable as answerable

    embedder = _CountingEmbedder()
    similarity = embedder_similarity(embedder)
    first = similarity("abc", ["aab", "ccd", "aab"])
    assert embedder.embedded == ["aab", "ccd"]  # a repeated sentence once
    expected = [float(embedder._vector(t) @ embedder._vector("abc")) for t in ("aab", "ccd", "aab")]
    assert first == pytest.approx(expected, rel=1e-6)
    again = embedder_similarity(embedder)("hhg", ["ccd", "eef"])  # a new pipeline, another question
    assert embedder.embedded == ["aab", "ccd", "eef"]  # only the sentence not seen before
    assert again == pytest.approx([float(embedder._vector(t) @ embedder._vector("hhg")) for t in ("ccd", "eef")],
                                  rel=1e-6)
    monkeypatch.setattr(answerable, "SENTENCE_CACHE", 2)  # the oldest vectors go first
    similarity("a", ["ggg"])
    similarity("a", ["aab"])
    assert embedder.embedded[-2:] == ["ggg", "aab"]
    assert similarity("a", []) == []


def test_a_see_also_list_of_manual_pages_is_no_answer_sentence() -> None:
    see_also = "rsh(1), scp(1), sftp(1), ssh-add(1), ssh-agent(1), ssh_config(5), sshd(8) 等。"
    pointer = "另见 sshd_config(5) 的 PermitUserEnvironment 选项。"
    prose = "See ls(1), cp(1) and mv(1) for how files are copied and moved between directories."
    assert reference_list(see_also) and not reference_list(pointer) and not reference_list(prose)
    hit = Hit(Chunk(1, f"{pointer}\n\n{see_also}\n\n{prose}", "man/ssh.1.txt", 0, start=0), 1.0)
    assert [text for _, text, _, _ in candidate_sentences([hit])] == [pointer, prose]



def test_an_earlier_passage_that_answers_too_leads_within_the_rank_margin() -> None:
    """The retriever's order counts once the question is answerable: a later passage that repeats more of the
    question's words (a warning that names them all) leads only when the first passage's best sentence covers much
    less; the first passage must answer by itself (its coverage and names), else the later one keeps the lead."""
    question = "怎么让 dpkg 强制覆盖别的软件包里的文件？"
    answer = Hit(Chunk(1, "你可以使用 --force-overwrite 选项让 dpkg 强制覆盖别的包的文件。", "dpkg.html", 0), 1.0)
    warning = Hit(Chunk(2, "dpkg 默认不会强制覆盖别的软件包里的文件，这样做有风险。", "faq.html", 0), 0.9)
    assert assess(question, [answer, warning]).support[0].hit_number == 2  # the most words lead
    assert assess(question, [answer, warning], rank_margin=0.6).support[0].hit_number == 1
    assert assess(question, [answer, warning], rank_margin=0.1).support[0].hit_number == 2  # not close enough
    unrelated = Hit(Chunk(1, "dpkg 是 Debian 的底层软件包工具。", "intro.html", 0), 1.0)  # covers little: no lead
    assert assess(question, [unrelated, warning], rank_margin=0.6).support[0].hit_number == 2


def test_a_manual_pages_title_line_is_never_quoted() -> None:
    """``TEE(1)   用户命令   TEE(1)`` atop a manual page (and its footer, ending with the same name) is a running head:
    it counts for the decision as the page's name, the answer never quotes it, and alone it answers nothing."""
    title = "TEE(1)                     用户命令                     TEE(1)\n\n"
    page = title + "名称\n       tee - 从标准输入读取数据并重定向到标准输出和文件。\n"
    decision = assess("tee 用户命令从标准输入读取数据后写到哪里？", [Hit(Chunk(1, page, "man/tee.1.txt", 0, start=0), 1.0)])
    assert decision.answerable
    assert [s.text for s in decision.support] == ["tee - 从标准输入读取数据并重定向到标准输出和文件。"]
    alone = assess("tee 的用户命令？", [Hit(Chunk(1, title, "man/tee.1.txt", 0, start=0), 1.0)])
    assert not alone.answerable and not alone.support


def test_a_web_manuals_navigation_bar_is_no_answer_sentence() -> None:
    bar = "[ < Graphical setup under Windows ] | [ 上 : Installing ] | [ Command line setup > ]"
    said = "Now click “OK” to everything until you are back to the main Frescobaldi window."
    hit = Hit(Chunk(1, f"{said}\n\n{bar}\n\n[ << 教程 ] | [ 首页 ][ 目录 ][ 索引 ] | [ Common notation >> ]\n",
                    "web/windows.html", 0, start=0), 1.0)
    assert [text for _, text, _, _ in candidate_sentences([hit])] == [said]


def test_the_earlier_passage_must_hold_the_names_the_lead_holds() -> None:
    """A name most chunks hold (Debian in Debian's manuals) anchors nothing, but once the lead's passage says it, an
    earlier passage that does not is no better lead."""
    question = "Debian 上 umask 设为 002 时新建的文件对同组用户可写吗？"
    generic = Hit(Chunk(1, "umask 设为 002 时，新建的文件对同组用户可写。", "manual/umask.html", 0), 1.0)
    debian = Hit(Chunk(2, "在 Debian 上 umask 设为 002 时，新建的文件对同组用户可写，因为每个用户有自己的组。",
                       "debian-reference/ch01.html", 0), 0.9)
    common = _Neighbours([])
    common.idf = lambda term: 0.4 if term == "debian" else 3.0  # type: ignore[method-assign]  # most chunks hold it
    assert assess(question, [generic, debian], common, rank_margin=2.0).support[0].hit_number == 2
    without = "umask 设为 002 时新建的文件对同组用户可写吗？"  # the question names no Debian: the earlier passage leads
    assert assess(without, [generic, debian], common, rank_margin=2.0).support[0].hit_number == 1


def test_a_one_letter_option_is_a_token_of_its_own_with_its_case() -> None:
    """"-r" / "%F" in a question are the option as written, not a letter every English word holds: the sentence
    that writes that option leads, not one with the other case or the letter inside a word (--file, --remove)."""
    assert [(t.text, t.neutral) for t in key_terms("dpkg -r 会删掉配置文件吗？")][-2:] == [("dpkg", True), ("-r", True)]
    assert [t.text for t in key_terms("date +%F 打出来的是什么格式？")][-1] == "%F"
    assert "rf" in [t.text for t in key_terms("rm -rf 危险吗")]  # more than one letter: a name as before
    assert [t.text for t in key_terms("tar ‐x 做什么")][-1] == "-x"  # groff's hyphen (U+2010) is a hyphen
    page = ("       -f, --file=日期文件\n              类似 --date；\n\n"
            "       -R, --rfc-email\n              以 RFC 5322 格式输出日期和时间。\n\n"
            "       %F     完整的日期；等于 %+4Y-%m-%d\n\n"
            "       -r, --reference=文件\n              显示文件的最后修改时间。\n")
    hit = Hit(Chunk(1, page, "man/date.1.txt", 0), 1.0)
    lead = assess("date +%F 打出来的是什么格式？", [hit]).support[0].text
    assert lead.startswith("%F")
    lead = assess("date 的 -r 选项显示什么时间？", [hit]).support[0].text
    assert lead.startswith("-r, --reference")
    lead = assess("date 的 -R 选项输出什么格式？", [hit]).support[0].text
    assert lead.startswith("-R, --rfc-email")


def test_a_sentence_of_another_section_shown_only_when_it_adds_enough() -> None:
    """A further sentence that joined for one weighty word the lead leaves out (every sentence of a thermostat manual
    says "thermostat") counts for the decision but is shown only from the lead's own section."""
    page = ("5. Restart and factory reset\n"
            "Factory reset: press and hold the dial for 20 seconds, then release it.\n\n"
            "6. Error codes\n"
            "E5 Firmware update failed. Keep the thermostat online; the update is retried.\n")
    common = _Neighbours([])
    common.idf = {"factory": 3.2, "reset": 3.2, "thermostat": 1.8}.get  # type: ignore[method-assign]
    common.max_idf = lambda: 5.0  # type: ignore[method-assign]
    decision = assess("How do I factory reset the thermostat?", [Hit(Chunk(1, page, "manual.pdf", 0), 1.0)], common)
    assert decision.answerable and decision.coverage == 1.0  # the passage holds every word
    assert [s.text for s in decision.support] == [
        "Factory reset: press and hold the dial for 20 seconds, then release it."]
    same = page.replace("\n\n6. Error codes\n", "\n")  # the same sentence in the lead's section is shown
    assert [s.text for s in assess("How do I factory reset the thermostat?", [Hit(Chunk(1, same, "manual.pdf", 0), 1.0)],
                                   common).support] == [
        "Factory reset: press and hold the dial for 20 seconds, then release it.",
        "Keep the thermostat online; the update is retried."]


def test_a_compound_said_apart_covers_it_half() -> None:
    """配置文件 in a sentence that says 配置 … 文件 is half covered (as a word jieba guessed is by its characters), enough
    that the passage is not "names only"; a compound that does not split into words end to end has no parts."""
    term = next(t for t in key_terms("mini-dinstall 的配置文件放在哪？") if t.text == "配置文件")
    assert term.parts == ("配置", "文件")
    said = "配置 mini-dinstall 需要设置 ~/.mini-dinstall.conf 文件；"
    assert covers(term, normalise(said), _latin_stems(said)) == 0.5
    only = "配置 mini-dinstall 需要一个目录；"
    assert covers(term, normalise(only), _latin_stems(only)) < 0.5
    assert compound_parts("服务器地址") == ("服务器", "地址")
    assert compound_parts("停车费") == ()  # 停车 / 车费 overlap; 费 alone is no word
