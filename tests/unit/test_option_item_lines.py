"""A manual page's option with a short description is a list item, not a heading (docs/EVAL.md "Parent passages and
dictionary relatives together")."""

from rag.answer.sentences import is_heading_line, segment

RM = ("       -r, -R, --recursive\n"
      "              递归地移除目录及它们的内容\n\n"
      "       -d, --dir\n"
      "              删除空目录\n\n"
      "       -C     逐列列出项目\n\n"
      "NAME\n"
      "       VPN 连接\n")


def test_short_option_descriptions_are_whole_sentences() -> None:
    by_text = {s.text: s for s in segment(RM)}
    for text in ("-d, --dir 删除空目录", "-C     逐列列出项目"):
        assert by_text[text].complete and not by_text[text].heading


def test_short_lines_without_an_option_stay_headings() -> None:
    assert is_heading_line("NAME")
    assert is_heading_line("VPN 连接")
    assert is_heading_line("5. Restart and factory reset")
    assert not is_heading_line("-d, --dir 删除空目录")
    assert not is_heading_line("-C     逐列列出项目")
    by_text = {s.text: s for s in segment(RM)}
    assert by_text["NAME"].heading and by_text["VPN 连接"].heading
