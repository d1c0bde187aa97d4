"""Dictionary relatives in the answerability decision (issue 16): paraphrases and the other language, traps kept.

A tiny CC-CEDICT file is written here (entries in its format, glosses as the dictionary gives them), so the tests
need no download and show which links the decision makes and which it refuses to make.
"""

from __future__ import annotations

import pytest

from rag.answer.answerable import Term, _latin_stems, assess, candidate_sentences, covers, key_terms, relatives_of
from rag.answer.sentences import normalise
from rag.core.types import Chunk, Hit
from rag.index.bridge import Dictionary

CEDICT = """\
目錄 目录 [mu4 lu4] /catalog/table of contents/directory (on computer hard drive)/list/contents/
名錄 名录 [ming2 lu4] /directory/
大小 大小 [da4 xiao3] /large and small/size/adults and children/consideration of seniority/
顯示 显示 [xian3 shi4] /to show/to illustrate/to display/to demonstrate/
字節 字节 [zi4 jie2] /byte/
員工 员工 [yuan2 gong1] /staff/personnel/employee/
年假 年假 [nian2 jia4] /annual leave/
產假 产假 [chan3 jia4] /maternity leave/
停車 停车 [ting2 che1] /to pull up (stop one's vehicle)/to park/
停車場 停车场 [ting2 che1 chang3] /parking lot/car park/
費用 费用 [fei4 yong4] /cost/expenditure/expense/
使用 使用 [shi3 yong4] /to use/to employ/to apply/to make use of/
利用 利用 [li4 yong4] /to use/
運用 运用 [yun4 yong4] /to use/
採用 采用 [cai3 yong4] /to use/
套用 套用 [tao4 yong4] /to use/
改用 改用 [gai3 yong4] /to use/
施用 施用 [shi1 yong4] /to use/
東西 东西 [dong1 xi5] /thing/stuff/person/
"""

LS_PAGE = ("-h, --human-readable\n"
           "       与 -l 同时使用时，以易读的格式显示大小，例如 1K 234M 2G。\n"
           "-S     根据文件大小排序，最大的最前。\n")
HANDBOOK = ("第三章 考勤与假期\n"
            "员工每天上班需要打卡，迟到超过 30 分钟按半天事假处理。\n"
            "员工入职满一年后每年享有 5 天带薪年假。\n"
            "出差补贴按城市等级发放。\n")


class _Corpus:
    """What the decision reads of an index: idf (every word alike unless ``light``) and no neighbours."""

    def __init__(self, light: dict[str, float] | None = None) -> None:
        self.light = light or {}

    def idf(self, term: str) -> float | None:
        return self.light.get(term, 2.0)

    def max_idf(self) -> float:
        return 2.0

    def neighbours(self, chunk: Chunk, reach: int = 1) -> list[Chunk]:
        return []


@pytest.fixture
def dictionary() -> Dictionary:
    return Dictionary.from_cedict_lines(CEDICT.splitlines())


def test_a_chinese_word_is_linked_through_its_specific_glosses_not_broad_ones(dictionary: Dictionary) -> None:
    assert set(relatives_of("目录", dictionary)) >= {"directory", "名录", "catalog"}
    # "to use" is a gloss dozens of words share: 使用 links to none of them
    assert not {"利用", "运用", "采用"} & set(relatives_of("使用", dictionary))
    assert relatives_of("东西", dictionary) == ()  # "thing", "stuff": what kind, not which
    # a two-word gloss is a phrase: 产假 is "maternity leave", never "leave" (which 年假 also is)
    assert relatives_of("产假", dictionary) == ("maternity leave",)


def test_an_english_word_is_linked_to_the_chinese_words_it_glosses(dictionary: Dictionary) -> None:
    assert "大小" in relatives_of("sizes", dictionary)  # inflected: sizes -> size
    assert "显示" in relatives_of("display", dictionary)
    assert "停车场" in relatives_of("parking", dictionary)
    # with an index, only the words some chunk holds are kept
    assert relatives_of("display", dictionary, _Corpus({"显示": None})) == ()  # type: ignore[dict-item]


def test_a_sentence_holding_a_relative_covers_the_term_at_its_credit(dictionary: Dictionary) -> None:
    term = Term("文件夹", 1.0, False, ("directory", "目录"))
    sentence = "--group-directories-first 将目录排在文件前面"
    flat, stems = normalise(sentence), _latin_stems(sentence)
    assert covers(term, flat, stems, 0.8) == 0.8
    assert covers(term, flat, stems, 0.0) == 0.25  # relatives off: half credit for 文件, one of its two pieces
    assert covers(Term("目录", 1.0, False), flat, stems) == 1.0  # the word itself: fully
    # an English relative matches an inflected or longer form (directory in directories), a phrase only as written
    assert covers(Term("目录", 1.0, False, ("directory",)), "", _latin_stems("list directories"), 0.8) == 0.8
    assert covers(Term("产假", 1.0, False, ("maternity leave",)), normalise("leave for maternity"),
                  _latin_stems("leave for maternity"), 0.8) == 0.0


def test_the_key_terms_carry_their_relatives_only_with_a_dictionary(dictionary: Dictionary) -> None:
    terms = {t.text: t for t in key_terms("ls 列出的目录大小怎么看？", None, dictionary)}
    assert "directory" in terms["目录"].relatives and "ls" in terms and terms["ls"].relatives == ()
    assert all(t.relatives == () for t in key_terms("ls 列出的目录大小怎么看？"))


def test_an_english_question_over_a_chinese_page_is_answered_when_the_page_answers_it(
        dictionary: Dictionary) -> None:
    page = [Hit(Chunk(1, LS_PAGE, "man/ls.1.txt", 0), 1.0)]
    question = "How can ls display sizes like 1K, 234M and 2G?"
    decision = assess(question, page, _Corpus(), dictionary=dictionary)
    assert decision.answerable and decision.cross_language
    assert decision.support[0].text.startswith("-h, --human-readable")
    # word overlap alone cannot see it: only names match across languages, and they are not enough
    assert not assess(question, page, _Corpus()).answerable
    # the same page does not answer what it does not say, relatives or not
    assert not assess("Which ls option shows the parking fee?", page, _Corpus(), dictionary=dictionary).answerable


def test_an_english_question_over_the_chinese_handbook(dictionary: Dictionary) -> None:
    handbook = [Hit(Chunk(1, HANDBOOK, "员工手册.docx", 0), 1.0)]
    corpus = _Corpus({"days": 0.5})
    annual = assess("How many days of annual leave do employees get?", handbook, corpus, dictionary=dictionary)
    assert annual.answerable and "年假" in annual.support[0].text
    # the same shape of question about what the handbook never says stays refused
    for trap in ("How many days of maternity leave do employees get?", "How much is the monthly parking fee?"):
        assert not assess(trap, handbook, corpus, dictionary=dictionary).answerable, trap


def test_the_parking_fee_trap_stays_refused_with_relatives(dictionary: Dictionary) -> None:
    handbook = [Hit(Chunk(1, HANDBOOK, "员工手册.docx", 0), 1.0)]
    decision = assess("公司停车场每月停车费是多少？", handbook, _Corpus(), dictionary=dictionary)
    assert not decision.answerable and "停车费" in decision.missing


def test_another_passage_gives_no_second_sentence_unless_it_answers_on_its_own(dictionary: Dictionary) -> None:
    ls_page = Hit(Chunk(1, LS_PAGE, "man/ls.1.txt", 0), 1.0)
    other = Hit(Chunk(2, "-S     按文件大小排序，最大的最前，前面是目录。\n", "man/dir.1.txt", 0), 0.9)
    decision = assess("ls 怎么按文件大小排序，最大的排在前面？", [ls_page, other], _Corpus(), dictionary=dictionary)
    assert decision.answerable and {s.hit_number for s in decision.support} == {1}


def test_a_name_joined_by_underscore_or_hyphen_is_found_written_with_spaces() -> None:
    name = Term("worker_threads", 1.0, True)
    assert covers(name, normalise("Worker threads: run JavaScript in parallel."), set()) == 1.0
    assert covers(name, normalise("Workers and threads"), set()) == 0.0
    assert covers(Term("1k", 1.0, True), normalise("1 K"), set()) == 1.0  # unchanged: whitespace never counted


def test_a_usage_line_is_never_an_answer_sentence() -> None:
    page = ("SYNOPSIS\n"
            "       sort [OPTION]... [FILE]...\n"
            "-c, --check\n"
            "       检查输入是否已经排好序，不排序。\n")
    hits = [Hit(Chunk(1, page, "man/sort.1.txt", 0), 1.0)]
    assert [text for _, text, _, _ in candidate_sentences(hits)] == ["-c, --check 检查输入是否已经排好序，不排序。"]
    # nothing else about sort to say: the usage line is no answer to a question the page does not answer
    assert not assess("Which sort option only checks whether a file is already sorted?", hits).answerable
