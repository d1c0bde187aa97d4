"""Among sentences that cover the question's words about as well, the one closest in meaning leads (docs/EVAL.md
"Parent passages and dictionary relatives together"): it only changes which sentence answers, never whether."""

from __future__ import annotations

from collections.abc import Sequence

from rag.answer.answerable import assess
from rag.core.types import Chunk, Hit

QUESTION = "ls 怎么按修改时间排序，最新的排在前面？"
WORDY = "-c 与 -lt 一起使用时：按照 ctime 排序，最新的排在前面；\n"
ANSWER = "-t 按修改时间排序，最新的最前。\n"


def _hits() -> list[Hit]:
    return [Hit(Chunk(1, WORDY, "man/ls.1.txt", 0), 1.0), Hit(Chunk(2, ANSWER, "man/ls.1.txt", 5), 0.9)]


def _closer_to(marker: str):  # type: ignore[no-untyped-def]
    def similarity(question: str, sentences: Sequence[str]) -> list[float]:
        return [0.9 if marker in s else 0.8 for s in sentences]
    return similarity


def test_the_sentence_closest_in_meaning_leads_when_it_answers_too() -> None:
    by_words = assess(QUESTION, _hits(), None, similarity=_closer_to("-t"), pick_margin=0.0, max_sentences=1)
    assert by_words.answerable and by_words.support[0].text.startswith("-c")
    by_meaning = assess(QUESTION, _hits(), None, similarity=_closer_to("-t"), pick_margin=0.4, max_sentences=1)
    assert by_meaning.answerable and by_meaning.support[0].text.startswith("-t")


def test_a_close_sentence_that_does_not_answer_never_leads_nor_refuses() -> None:
    near = "-U 不排序，按目录顺序列出最新的项目。\n"  # close in score (ls, 排序, 最新) but short of 0.7 alone
    hits = [_hits()[0], Hit(Chunk(2, near, "man/ls.1.txt", 9), 0.9)]
    decision = assess(QUESTION, hits, None, similarity=_closer_to("-U"), pick_margin=0.4, min_coverage=0.7,
                      max_sentences=1)
    assert decision.answerable and decision.support[0].text.startswith("-c")
    refused = assess(QUESTION, [hits[1]], None, similarity=_closer_to("-U"), pick_margin=0.4, min_coverage=0.7)
    assert not refused.answerable  # it does not answer on its own either


def test_a_sentence_that_adds_to_another_does_not_lead_by_meaning() -> None:
    """The sample KB's factory-reset case: "You can also start a factory reset from the app" is as close in meaning
    as the 20-second instruction before it, but it adds to that statement; the statement leads (and an added
    sentence that is the only answer still answers)."""
    question = "How do I factory reset the thermostat?"
    text = ("Factory reset: press and hold the dial for 20 seconds until the ring light flashes red three times, "
            "then release it. You can also start a factory reset from Settings > Device > Reset in the app.\n")
    hits = [Hit(Chunk(1, text, "product_manual_en.pdf", 0, heading=("Restart and factory reset",)), 1.0)]
    picked = assess(question, hits, None, similarity=_closer_to("also"), pick_margin=0.4, max_sentences=1)
    assert picked.answerable and picked.support[0].text.startswith("Factory reset: press and hold")
    alone = "You can also start a factory reset from Settings > Device > Reset in the app.\n"
    only = assess(question, [Hit(Chunk(2, alone, "product_manual_en.pdf", 0,
                                       heading=("Restart and factory reset",)), 1.0)],
                  None, similarity=_closer_to("also"), pick_margin=0.4)
    assert only.answerable and only.support[0].text.startswith("You can also")


def test_a_how_to_question_over_a_manual_is_answered_by_the_option_line() -> None:
    """"怎么创建软链接" over ln's manual: the "-s, --symbolic" line answers it, not the prose that repeats more of the
    question's words (answer.option_margin); off (0), the prose leads; a line that says none of the question's words
    itself (only its page's title holds them) never leads; a question that asks no how does not switch."""
    prose = "硬链接使用 ln target link 命令创建。\n"
    line = "-s, --symbolic 创建符号链接而非硬链接\n"
    hits = [Hit(Chunk(1, prose, "debian-reference/ch01.html", 0, heading=("文件链接",)), 1.0),
            Hit(Chunk(2, line, "man/ln.1.txt", 0, heading=("LN(1)", "ln - 在文件之间建立连接")), 0.9)]
    question = "ln 怎么创建软链接而不是硬链接？"
    off = assess(question, hits, None, max_sentences=1)
    assert off.answerable and off.support[0].text.startswith("硬链接使用")
    on = assess(question, hits, None, max_sentences=1, option_margin=0.3)
    assert on.answerable and on.support[0].text.startswith("-s, --symbolic")
    titled_only = [hits[0], Hit(Chunk(2, "-v, --verbose 显示每个已处理文件的名称\n", "man/ln.1.txt", 0,
                                      heading=("LN(1)", "ln - 创建链接")), 0.9)]
    kept = assess(question, titled_only, None, max_sentences=1, option_margin=0.3)
    assert kept.answerable and kept.support[0].text.startswith("硬链接使用")
    plain = assess("ln 的软链接和硬链接有什么不同？", hits, None, max_sentences=1, option_margin=0.3)
    assert not plain.support or not plain.support[0].text.startswith("-s")
