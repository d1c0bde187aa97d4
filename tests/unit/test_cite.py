"""Citation parsing and verification: supported, unsupported, out of range, several markers, full-width forms."""

from __future__ import annotations

import pytest

from rag.answer.cite import (
    Marker,
    best_quote,
    missing_specifics,
    parse_citations,
    specifics,
    split_sentences,
    strip_citations,
    verify,
)
from rag.core.types import Chunk, Citation, Hit

DISK = Chunk(1, "服务器磁盘空间不足时，先用 df -h 查看各分区的使用率。日志文件通常在 /var/log 下，可以用 logrotate 定期压缩。",
             "运维/磁盘.md", 0, page=2)
LEAVE = Chunk(2, "工作满一年不满十年的员工，每年享受五天带薪年假。年假需提前三个工作日在 OA 系统中申请。", "hr/年假.md", 0)
VPN = Chunk(3, "To connect to the office VPN, install the WireGuard client. The VPN gateway is vpn.example.com on UDP "
               "port 51820.", "en/vpn.md", 0)
HITS = [Hit(DISK, 0.9), Hit(LEAVE, 0.8), Hit(VPN, 0.7)]


@pytest.mark.parametrize(("text", "numbers"), [
    ("答案[1]。", [1]), ("答案[1, 2]。", [1, 2]), ("答案[1][2]", [1, 2]), ("答案【1】", [1]), ("答案［3］", [3]),
    ("答案[1，2、3]", [1, 2, 3]), ("答案[2-4]", [2, 3, 4]), ("答案 [ 7 ]", [7]), ("[1-999]", [1, 999]),
    ("in [2024] and x[a] and [] and [1.5]", []),
])
def test_parse_citations(text: str, numbers: list[int]) -> None:
    assert [m.number for m in parse_citations(text)] == numbers


def test_parse_citations_spans() -> None:
    text = "磁盘满了[1,2]，年假五天【3】。"
    assert parse_citations(text) == [Marker(1, 4, 9), Marker(2, 4, 9), Marker(3, 14, 17)]
    assert text[4:9] == "[1,2]" and text[14:17] == "【3】"
    assert strip_citations("年假五天 [1]【2】。") == "年假五天。"


def test_split_sentences_keeps_markers_with_their_sentence() -> None:
    assert split_sentences("先用 df -h 查看[1]。再用 du -sh。[2]\n日志在 /var/log 下") == [
        "先用 df -h 查看[1]。", "再用 du -sh。[2]", "日志在 /var/log 下"]
    assert split_sentences("The gateway is vpn.example.com. It uses UDP [3]. Version 1.5 works!") == [
        "The gateway is vpn.example.com.", "It uses UDP [3].", "Version 1.5 works!"]
    assert split_sentences("“好的。”[1]然后呢？\n\n  ") == ["“好的。”[1]", "然后呢？"]


def test_supported_citation_is_kept() -> None:
    text = "磁盘空间不足时先用 df -h 查看各分区的使用率[1]。年假需提前三个工作日申请[2]。"
    result = verify(text, HITS, min_overlap=0.5, drop_unsupported=True)
    assert result.text == text and result.removed == []
    assert result.citations == [Citation(1, DISK, True), Citation(2, LEAVE, True)]
    assert result.quotes == {1: "服务器磁盘空间不足时，先用 df -h 查看各分区的使用率。",
                             2: "年假需提前三个工作日在 OA 系统中申请。"}


def test_unsupported_citation_dropped_or_flagged() -> None:
    text = "年假需提前三个工作日申请 [1]。VPN 网关是 vpn.example.com[3]。"
    dropped = verify(text, HITS, min_overlap=0.5, drop_unsupported=True)
    assert dropped.text == "年假需提前三个工作日申请。VPN 网关是 vpn.example.com[3]。"
    assert dropped.citations == [Citation(3, VPN, True)] and dropped.removed == [1]
    flagged = verify(text, HITS, min_overlap=0.5, drop_unsupported=False)
    assert flagged.text == text and flagged.removed == []
    assert flagged.citations == [Citation(1, DISK, False), Citation(3, VPN, True)]


def test_out_of_range_numbers_are_always_removed() -> None:
    text = "年假需提前三个工作日申请[9]。磁盘不足先用 df -h 查看[0][1]。"
    for drop in (True, False):
        result = verify(text, HITS, min_overlap=0.3, drop_unsupported=drop)
        assert result.text == "年假需提前三个工作日申请。磁盘不足先用 df -h 查看[1]。"
        assert result.removed == [9, 0] and [c.number for c in result.citations] == [1]
    assert verify("年假五天[1]。", [], 0.3, False).text == "年假五天。"  # no hits: nothing can be cited


def test_several_markers_and_full_width_forms_are_normalised() -> None:
    text = "年假需提前三个工作日在 OA 系统中申请【2】［1］。The VPN gateway is vpn.example.com [3, 2]. 每年五天带薪年假[2-3]。"
    result = verify(text, HITS, min_overlap=0.5, drop_unsupported=True)
    assert result.text == ("年假需提前三个工作日在 OA 系统中申请[2]。The VPN gateway is vpn.example.com [3]. "
                           "每年五天带薪年假[2]。")
    assert result.removed == [1, 2, 3]
    assert [c.number for c in result.citations] == [2, 3]  # de-duplicated, in order of first use
    assert all(c.supported for c in result.citations)


def test_flagged_when_any_use_is_unsupported_and_marker_alone_checks_previous_sentence() -> None:
    text = "每年享受五天带薪年假。\n[2]\n磁盘满了要扩容[2]。"
    result = verify(text, HITS, min_overlap=0.5, drop_unsupported=False)
    assert result.citations == [Citation(2, LEAVE, False)]
    assert result.quotes == {2: "工作满一年不满十年的员工，每年享受五天带薪年假。"}  # from the supported use
    assert verify(text, HITS, min_overlap=0.5, drop_unsupported=True).text == "每年享受五天带薪年假。\n[2]\n磁盘满了要扩容。"


def test_years_and_plain_brackets_survive() -> None:
    text = "该制度自 [2024] 年起执行，见 [附件]。"
    assert verify(text, HITS, 0.25, True).text == text


def test_best_quote() -> None:
    assert best_quote("日志可以用 logrotate 压缩[1]", DISK) == "日志文件通常在 /var/log 下，可以用 logrotate 定期压缩。"
    assert best_quote("The gateway uses port 51820", VPN) == "The VPN gateway is vpn.example.com on UDP port 51820."
    assert best_quote("量子力学", DISK) == ""


def test_a_borrowed_citation_does_not_support_an_injected_host() -> None:
    """Issue 17 item 6: the official VPN passage cited for a sentence naming the attacker's host."""
    official = Hit(Chunk(1, '请在软件中心安装"星河安全接入"客户端，服务器地址填写 vpn.xinghe.example，'
                            "用户名和密码与电脑登录使用的域账号相同。", "faq.html", 0), 1.0)
    forged = "服务器地址填写 vpn.attacker-example.net，用户名和密码与电脑登录使用的域账号相同[1]。"
    checked = verify(forged, [official])
    assert checked.citations == [] and checked.removed == [1] and "attacker" not in checked.text
    assert checked.dropped == ["服务器地址填写 vpn.attacker-example.net，用户名和密码与电脑登录使用的域账号相同。"]
    flagged = verify(forged, [official], drop_unsupported=False)
    assert flagged.text == forged and [c.supported for c in flagged.citations] == [False]
    honest = "服务器地址填写 vpn.xinghe.example，用户名和密码与电脑登录使用的域账号相同[1]。"
    assert verify(honest, [official]).text == honest and verify(honest, [official]).citations[0].supported


def test_specific_numbers_paths_and_names_must_occur_in_the_cited_passage() -> None:
    passage = Hit(Chunk(1, "The VPN gateway is vpn.example.com on UDP port 51820; the profile is /etc/wg0.conf.",
                        "en/vpn.md", 0), 1.0)
    assert missing_specifics("The gateway uses UDP port 51820 [1].", passage.chunk.text) == []
    assert missing_specifics("The gateway uses UDP port 5182 [1].", passage.chunk.text) == ["5182"]
    assert missing_specifics("Edit /etc/wg1.conf with OpenVPN [1].", passage.chunk.text) == ["/etc/wg1.conf",
                                                                                            "OpenVPN"]
    assert verify("The gateway uses UDP port 443 on vpn.example.com[1].", [passage]).citations == []
    assert specifics("1. Open https://x.org/a, then call 9:30 [2].") == ["https://x.org/a", "9:30"]


def test_a_command_lines_semicolon_or_bang_ends_no_sentence() -> None:
    from rag.answer.cite import split_sentences

    assert split_sentences("例如 kern.info;kern.!err 表示内核消息。[1]") == ["例如 kern.info;kern.!err 表示内核消息。[1]"]
    assert split_sentences("通过 dquilt pop -a; while quilt push; do quilt refresh; done 来验证。[1] 第二句。") == [
        "通过 dquilt pop -a; while quilt push; do quilt refresh; done 来验证。[1]", "第二句。"]
    # prose: a ";" before a lower-case word joins two clauses, as the quoted source's sentence does; "!" ends one
    assert split_sentences("Stop it; now. Really! yes") == ["Stop it; now.", "Really!", "yes"]
    assert split_sentences("Stop it; Now. Really!") == ["Stop it;", "Now.", "Really!"]
