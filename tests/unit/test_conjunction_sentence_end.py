"""A sentence end before a conjunction: only a closing quote keeps the sentence going (docs/EVAL.md "Parent passages
and dictionary relatives together")."""

from rag.answer.cite import sentence_spans
from rag.answer.sentences import is_whole_sentence, segment

LS_C = ("       -B, --ignore-backups\n"
        "              不要列出以 ~ 结尾的项目\n\n"
        "       -c     与 -lt 一起使用时：按照 ctime 排序，并显示 ctime（文件状态信息最后变更的时间）；与  -l\n"
        "              一起使用时：显示 ctime 并按照名称排序；其它情况：按照 ctime 排序，最新的最前\n\n"
        "       -C     逐列列出项目\n")


def test_semicolon_before_a_conjunction_ends_the_sentence() -> None:
    texts = [s.text for s in segment(LS_C)]
    assert "-c     与 -lt 一起使用时：按照 ctime 排序，并显示 ctime（文件状态信息最后变更的时间）；" in texts
    assert "与  -l 一起使用时：显示 ctime 并按照名称排序；" in texts


def test_the_quoted_answer_splits_as_its_source() -> None:
    """Every piece the eval's answer split (cite.sentence_spans) makes of a quoted sentence starts a source sentence."""
    quoted = "-c     与 -lt 一起使用时：按照 ctime 排序，并显示 ctime（文件状态信息最后变更的时间）；与  -l 一起使用时：显示 ctime 并按照名称排序；"
    pieces = [quoted[a:b] for a, b in sentence_spans(quoted)]
    assert len(pieces) == 2
    assert all(is_whole_sentence(piece, LS_C) for piece in pieces)


def test_a_question_in_quotes_the_sentence_goes_on_after_ends_nothing() -> None:
    texts = [s.text for s in segment("例如“怎样重建索引？”或者“如何备份”都可以问。下一句。")]
    assert texts == ["例如“怎样重建索引？”或者“如何备份”都可以问。", "下一句。"]
