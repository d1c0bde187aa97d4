"""The served API's own handling of OpenAI's stop / max_tokens / n / tools (rag.cli.openai_options)."""

from __future__ import annotations

import pytest

from rag.cli.openai_options import OptionError, OutputLimit, check_options


def chars(text: str) -> int:
    return len(text)  # one token per character: easy to reason about


def run(limit: OutputLimit, pieces: list[str]) -> str:
    return "".join(limit.feed(p) for p in pieces) + limit.close()


def test_stop_split_across_pieces_is_found_and_nothing_after_it_is_sent() -> None:
    limit = OutputLimit(["[1]"], None, chars)
    sent = [limit.feed(p) for p in ["年假需提前三天申", "请[", "1] 再", "说"]]
    assert sent == ["年假需提前三天申", "请", "", ""]  # "[" held back until "1]" shows it begins the stop
    assert limit.close() == "" and limit.finish_reason == "stop"


def test_a_held_back_tail_that_is_no_stop_is_sent() -> None:
    limit = OutputLimit(["###"], None, chars)
    assert run(limit, ["a#", "#b", "c#"]) == "a##bc#" and limit.finish_reason == "stop"


def test_earliest_of_several_stops_wins() -> None:
    assert run(OutputLimit(["C", "B"], None, chars), ["aBcC"]) == "a"


def test_max_tokens_cuts_and_reports_length() -> None:
    limit = OutputLimit([], 5, chars)
    assert run(limit, ["abc", "defg", "h"]) == "abcde" and limit.finish_reason == "length"
    exact = OutputLimit([], 5, chars)
    assert run(exact, ["abcde"]) == "abcde" and exact.finish_reason == "length"  # used all it was allowed
    short = OutputLimit([], 5, chars)
    assert run(short, ["abc"]) == "abc" and short.finish_reason == "stop"


@pytest.mark.parametrize(("body", "message"), [
    ({"n": 3}, "n=3 is not supported: this server returns one choice; leave n out or send n=1"),
    ({"functions": [{"name": "f"}]},
     "functions are not supported: this server answers from its knowledge base and calls no tools; leave functions out"),
    ({"stop": [1]}, "stop=[1] must be a string or a list of strings"),
])
def test_refused_options_name_the_value_and_the_fix(body: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError) as caught:
        check_options(body)
    assert str(caught.value) == message


def test_accepted_options() -> None:
    assert check_options({"n": 1, "tools": [], "stop": "END"}) == ["END"]
    assert check_options({"stop": ["", "x"]}) == ["x"]
    assert check_options({}) == []
