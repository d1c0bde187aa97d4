"""Sentence ends that are none: an abbreviation's ".", an end inside a bracketed aside, a "." before a tiny CJK
remnant."""

from rag.answer.cite import sentence_spans
from rag.answer.sentences import BRACKET_REACH, is_whole_sentence, segment

UFW = ("The configuration files in /etc/ufw/ also allow for complex rule sets (e.g. foo. bar) and more. "
       "Rules are read at boot.")
ZCAT = ("zcat  的功能与  gunzip  -c.   相同。  (在一些系统中,  zcat 可能被安装成 gzcat 以保留 compress 与zcat的原有连接。)")


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


def test_the_quoted_answer_splits_as_its_source() -> None:
    """The eval's answer split (cite.sentence_spans) keeps these sentences whole, so each is a whole sentence."""
    for source in (UFW, ZCAT, "Use approx. 5 GB, i.e. half. See Fig. 3 and cf. the table."):
        answer = "".join(f"{s.text}[1]" for s in segment(source))
        pieces = [answer[a:b].removesuffix("[1]") for a, b in sentence_spans(answer)]
        assert pieces == texts(source)
        assert all(is_whole_sentence(piece, source) for piece in pieces)
