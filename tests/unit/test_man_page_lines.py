"""Lines of manual pages that answer questions and were cut away before.

A sentence that introduces command lines with a colon ("请使用下列命令：" above indented ``rm -- -foo``) is one sentence
with them: alone the intro is unfinished and each command a short line without punctuation (a heading by the
segmenter's rules), so neither could answer "how do I remove a file called -foo". A value with its description
(an exit status list's ``124    如果指定“命令”超时``) is a list item, not a numbered heading."""

from types import SimpleNamespace

from rag.answer.answerable import Support, candidate_sentences
from rag.answer.extractive import render
from rag.answer.sentences import MAX_EXAMPLE_LINES, is_heading_line, segment
from rag.cli.eval import sentence_faults
from rag.core.types import Chunk, Hit

RM = ("       默认情况下，rm 不移除目录。\n\n"
      "       如果需要删除一个文件名以连字符 “-”起始的文件，例如 '-foo'，请使用下列命令：\n\n"
      "              rm -- -foo\n\n"
      "              rm ./-foo\n\n"
      "       注意，如果使用 rm 删除文件，通常仍可以将该文件恢复原状。\n")
INTRO = "如果需要删除一个文件名以连字符 “-”起始的文件，例如 '-foo'，请使用下列命令："
PROMPT = ("So you should really run dpkg-reconfigure samba-common to adapt it:\n\n"
          "$ sudo dpkg-reconfigure samba-common\n\n"
          "The first question is the name of the workgroup.\n")


def test_the_intro_and_its_indented_commands_are_one_complete_sentence() -> None:
    sentences = segment(RM)
    assert [(s.text, s.complete, s.heading) for s in sentences] == [
        ("默认情况下，rm 不移除目录。", True, False),
        (f"{INTRO} rm -- -foo rm ./-foo", True, False),
        ("注意，如果使用 rm 删除文件，通常仍可以将该文件恢复原状。", True, False)]
    merged = sentences[1]
    assert RM[merged.start:merged.end].startswith("如果需要") and RM[merged.start:merged.end].endswith("rm ./-foo")


def test_shell_prompt_lines_are_commands_without_indentation() -> None:
    assert [s.text for s in segment(PROMPT)] == [
        "So you should really run dpkg-reconfigure samba-common to adapt it: $ sudo dpkg-reconfigure samba-common",
        "The first question is the name of the workgroup."]


def test_under_a_chinese_sentence_a_latin_line_at_the_margin_is_what_it_introduces() -> None:
    """A web page's <pre> block reaches the text at the margin: under a Chinese intro a line without CJK text is the
    config line it introduces; Chinese prose after it, or a Latin intro above a margin line, stays apart."""
    page = ("先崩溃的方案：\n\n更新“/etc/security/limits.conf”文件，包括下面内容：\n\n* soft core unlimited\n\n"
            "shell 提示符下输入 \"ulimit -c unlimited\"。\n")
    assert [(s.text, s.complete) for s in segment(page)][1:] == [
        ("更新“/etc/security/limits.conf”文件，包括下面内容： * soft core unlimited", True),
        ('shell 提示符下输入 "ulimit -c unlimited"。', True)]
    prose = "更新“/etc/security/limits.conf”文件，包括下面内容：\n\n在首次安装时，只需要工作组的名称。\n"
    assert not segment(prose)[0].complete  # Chinese prose follows: nothing is introduced


def test_what_is_not_a_command_stays_apart() -> None:
    prose = "Run the tool with the options below to adapt it:\n\n在首次安装时，只需要工作组的名称。\n"
    first = segment(prose)[0]
    assert first.text.endswith("adapt it:") and not first.complete  # prose follows: nothing is introduced
    flush = "Query a name server for the records of a domain:\ndig -d DOMAIN.com @192.168.1.1 +short\n"
    assert segment(flush)[0].text == "Query a name server for the records of a domain:"  # not indented, no prompt
    short = "示例：\n\n      rm -- -foo\n"
    assert [s.text for s in segment(short)][0] == "示例："  # a label, not a sentence that says something
    many = INTRO + "\n" + "".join(f"        cmd{i} --flag\n" for i in range(MAX_EXAMPLE_LINES + 2)) + "后文。\n"
    taken = segment(many)[0].text.split("：", 1)[1].split()
    assert taken == [w for i in range(MAX_EXAMPLE_LINES) for w in (f"cmd{i}", "--flag")]


def test_the_answer_quotes_it_whole_and_without_a_full_stop_after_the_commands() -> None:
    text = render([Support(f"{INTRO} rm -- -foo rm ./-foo", 1, ("rm.1.txt", 0, 0), frozenset()),
                   Support("注意，如果使用 rm 删除文件，通常仍可以将该文件恢复原状。", 1, ("rm.1.txt", 0, 1), frozenset())])
    assert text == f"{INTRO} rm -- -foo rm ./-foo[1]\n注意，如果使用 rm 删除文件，通常仍可以将该文件恢复原状。[1]"
    answer = SimpleNamespace(text=text, hits=[Hit(Chunk(1, RM, "rm.1.txt", 0), 1.0)])
    assert sentence_faults(answer, None) == (2, 0, 0)


def test_the_merged_sentence_is_a_candidate_answer() -> None:
    hits = [Hit(Chunk(1, RM, "man/rm.1.txt", 0), 1.0)]
    assert f"{INTRO} rm -- -foo rm ./-foo" in [text for _, text, _, _ in candidate_sentences(hits)]


EXIT = ("   退出状态：\n"
        "       124    如果指定“命令”超时，且未指定 --preserve-status 选项\n\n"
        "       127    如果未找到命令\n\n"
        "2 Installation\n\n"
        "3.1 Getting started with the system\n")


def test_a_value_and_its_description_is_an_item_not_a_numbered_heading() -> None:
    assert [(s.text, s.complete, s.heading) for s in segment(EXIT)] == [
        ("退出状态：", False, False),
        ("124    如果指定“命令”超时，且未指定 --preserve-status 选项", True, False),
        ("127    如果未找到命令", True, False),
        ("2 Installation", False, True),
        ("3.1 Getting started with the system", False, True)]
    assert not is_heading_line("124    如果指定“命令”超时，且未指定 --preserve-status 选项")  # as the eval reads it
    assert is_heading_line("2 Installation") and is_heading_line("3.1 Getting started with the system")


FORMATS = ("       %F     完整的日期；等于 %+4Y-%m-%d\n\n"
           "       %H     小时 (00..23)\n\n"
           "       %%     一个 % 字符\n\n"
           "       \\n     换行\n\n"
           "%%%  definitions.ily\n\n"
           "F Major\n")


def test_a_format_or_escape_and_its_description_is_an_item_not_a_heading() -> None:
    """date(1)'s ``%H     小时 (00..23)`` is short and has no sentence end: without the rule it was a heading, and
    the "about" of every item under it."""
    assert [(s.text, s.complete, s.heading) for s in segment(FORMATS)][2:] == [
        ("%H     小时 (00..23)", True, False),
        ("%%     一个 % 字符", True, False),
        ("\\n     换行", True, False),
        ("%%%  definitions.ily", False, True),  # a code comment's marks: no conversion, still a short line
        ("F Major", False, True)]
