"""Sentence ends that are none (an abbreviation's ".", an end inside a bracketed aside, a "." before a tiny CJK
remnant), and a command line quoted without a full stop that the eval still counts as a whole sentence."""

from types import SimpleNamespace

from rag.answer.answerable import Support
from rag.answer.cite import sentence_spans
from rag.answer.extractive import render
from rag.answer.sentences import BRACKET_REACH, is_whole_sentence, segment
from rag.cli.eval import sentence_faults
from rag.core.types import Chunk, Hit

UFW = ("The configuration files in /etc/ufw/ also allow for complex rule sets (e.g. foo. bar) and more. "
       "Rules are read at boot.")
ZCAT = ("zcat  的功能与  gunzip  -c.   相同。  (在一些系统中,  zcat 可能被安装成 gzcat 以保留 compress 与zcat的原有连接。)")
DIG = ("Query a name server for the records of a domain with a short answer and a few retries:\n"
       "dig -d DOMAIN.com @192.168.1.1 +short +tries=3 +time=5\n"
       "The answer lists the records that the name server found for the domain, one record per line.\n")


def texts(text: str) -> list[str]:
    return [s.text for s in segment(text)]


def test_an_abbreviation_ends_no_sentence() -> None:
    assert texts(UFW) == ["The configuration files in /etc/ufw/ also allow for complex rule sets (e.g. foo. bar) and more.",
                          "Rules are read at boot."]
    assert texts("音符都是用小写字母表示的，和大写 (e.g. C 和 c) 不同。下一句。") == [
        "音符都是用小写字母表示的，和大写 (e.g. C 和 c) 不同。", "下一句。"]
    assert texts("Use approx. 5 GB, i.e. half. See Fig. 3 and cf. the table. Ask Dr. Li. Item No. 5 is here. Say No. Go.") == [
        "Use approx. 5 GB, i.e. half.", "See Fig. 3 and cf. the table.", "Ask Dr. Li.", "Item No. 5 is here.", "Say No.",
        "Go."]
    assert texts("It took 87 ms. So the rest waits. Mind the 1st. Then go.") == [
        "It took 87 ms.", "So the rest waits.", "Mind the 1st.", "Then go."]


def test_etc_ends_a_sentence_unless_a_lower_case_word_follows() -> None:
    assert texts("Logs, caches, etc. are kept. Formats (PNG, GIF, etc.) and more. It reads PNG, GIF, etc. Then it stops.") == [
        "Logs, caches, etc. are kept.", "Formats (PNG, GIF, etc.) and more.", "It reads PNG, GIF, etc.", "Then it stops."]


def test_an_abbreviation_at_the_end_of_its_block_ends_the_sentence() -> None:
    assert [(s.text, s.complete) for s in segment("He lives on Main St.\nNext line here.\n")] == [
        ("He lives on Main St.", True), ("Next line here.", True)]


def test_nothing_inside_a_bracket_ends_the_sentence() -> None:
    assert texts("权限有三种（读。写。执行）之一。下一句。") == ["权限有三种（读。写。执行）之一。", "下一句。"]
    assert texts("限制访问。（这可以像 tjener:/etc/exports 文件中所做限制 NFS 访问权限。）后文。") == [
        "限制访问。", "（这可以像 tjener:/etc/exports 文件中所做限制 NFS 访问权限。）", "后文。"]
    assert texts("(1) First one. (2) Second one. a) third. b) fourth.") == [
        "(1) First one.", "(2) Second one.", "a) third.", "b) fourth."]


def test_a_bracket_that_does_not_close_nearby_holds_no_aside() -> None:
    long = "word " * (BRACKET_REACH // 5)
    assert texts(f"Open (it ends. {long}) now.") == ["Open (it ends.", f"{long}) now."]
    assert texts("An unclosed (bracket. Next one.") == ["An unclosed (bracket.", "Next one."]


def test_a_tiny_cjk_remnant_stays_with_its_sentence() -> None:
    assert texts(ZCAT) == ["zcat  的功能与  gunzip  -c.   相同。",
                           "(在一些系统中,  zcat 可能被安装成 gzcat 以保留 compress 与zcat的原有连接。)"]
    assert texts("指定 swapon 的 优先级. 这个 选项 要求 swapon 指定 一个 设备.") == [
        "指定 swapon 的 优先级.", "这个 选项 要求 swapon 指定 一个 设备."]


BAR = ('Other types of bar lines are added using \\bar, for example \\bar "||" for a double bar line, or \\bar "|." for '
       'a final bar line. He said "stop." Then he left.')


def test_a_quoted_literals_full_stop_before_a_lower_case_word_ends_nothing() -> None:
    assert texts(BAR) == ['Other types of bar lines are added using \\bar, for example \\bar "||" for a double bar '
                          'line, or \\bar "|." for a final bar line.', 'He said "stop."', "Then he left."]


def test_the_quoted_answer_splits_as_its_source() -> None:
    """The eval's answer split (cite.sentence_spans) keeps these sentences whole, so each is a whole sentence."""
    for source in (UFW, ZCAT, "Use approx. 5 GB, i.e. half. See Fig. 3 and cf. the table.", BAR.split(" He said")[0],
                   "Keep the thermostat online; the update is retried. Use a semicolon; It ends here."):
        answer = "".join(f"{s.text}[1]" for s in segment(source))
        pieces = [answer[a:b].removesuffix("[1]") for a, b in sentence_spans(answer)]
        assert pieces == texts(source)
        assert all(is_whole_sentence(piece, source) for piece in pieces)


def support(text: str, number: int = 1) -> Support:
    return Support(text, number, ("a", 0, 0), frozenset())


def test_a_command_line_is_quoted_without_a_full_stop() -> None:
    command = "dig -d DOMAIN.com @192.168.1.1 +short +tries=3 +time=5"
    assert render([support(command), support("The answer lists the records found.", 2)]) == (
        f"{command}[1]\nThe answer lists the records found.[2]")
    assert render([support("ls --color=auto"), support("Open the Network settings of the laptop", 2),
                   support("打开系统设置里的网络页面", 3)]) == (
        "ls --color=auto[1]\nOpen the Network settings of the laptop.[2] 打开系统设置里的网络页面。[3]")


def test_a_sentence_that_ends_inside_its_brackets_gets_no_second_full_stop() -> None:
    aside = "（这可以像 tjener:/etc/exports 文件中所做限制网络组成员或单个 IP 地址限定 NFS 访问权限。）"
    assert render([support(aside), support('He said "it is done."', 2)]) == f'{aside}[1]He said "it is done."[2]'
    assert [(a, b) for a, b in sentence_spans(render([support(aside)]))] == [(0, len(aside) + 3)]


def test_a_whole_command_line_is_a_whole_sentence_and_a_cut_piece_still_a_fragment() -> None:
    assert is_whole_sentence("dig -d DOMAIN.com @192.168.1.1 +short +tries=3 +time=5", DIG)
    assert not is_whole_sentence("dig -d DOMAIN.com @192.168.1.1 +short", DIG)  # cut, no punctuation
    assert not is_whole_sentence("DOMAIN.com @192.168.1.1 +short +tries=3 +time=5", DIG)  # starts mid-sentence
    assert not is_whole_sentence("dig -d DOMAIN.com @192.168.1.1 +short +tries=3 +time=5", DIG.rstrip("\n").rsplit(
        "\n", 1)[0])  # the source ends with it: it may be cut there
    text = render([support("dig -d DOMAIN.com @192.168.1.1 +short +tries=3 +time=5"),
                   support("The answer lists the records that the name server found for the domain, one record per line.")])
    answer = SimpleNamespace(text=text, hits=[Hit(Chunk(1, DIG, "dig.txt", 0), 1.0)])
    assert sentence_faults(answer, None) == (2, 0, 0)



def test_a_justified_lines_runs_of_spaces_read_as_one_but_a_command_keeps_them() -> None:
    justified = "这个版本的                 df 不能显示未挂载文件系统的可用空间。"
    assert render([support(justified)]) == "这个版本的 df 不能显示未挂载文件系统的可用空间。[1]"
    assert render([support("-c     与 -lt 一起使用时：按照 ctime 排序")]) == "-c 与 -lt 一起使用时：按照 ctime 排序。[1]"
    command = 'cut -d "  " -f 2 file.txt'  # a command line is quoted as it is
    assert render([support(command)]) == f"{command}[1]"
    assert is_whole_sentence(render([support(justified)]).removesuffix("[1]"), justified)
