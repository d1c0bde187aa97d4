"""rag.cli.streams: answers pumped by their own thread, closed by it however they end, cancelled on request, and a
stuck generator reported (issue 17 #1)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from rag.cli.streams import CLIENT_GONE, SHUTTING_DOWN, AnswerCancelled, OpenAnswers


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Answer:
    """A blocking answer iterator that records which thread closed it."""

    def __init__(self, pieces: int, hold: threading.Event | None = None) -> None:
        self.pieces, self.hold = pieces, hold
        self.closed_on: str | None = None
        self.sent = 0

    def __iter__(self) -> Iterator[str]:
        try:
            for number in range(self.pieces):
                if self.hold is not None and number == 1:
                    self.hold.wait(30)
                self.sent += 1
                yield f"piece{number} "
        finally:
            self.closed_on = threading.current_thread().name


def test_an_answer_is_read_to_the_end_and_closed_on_its_pump_thread() -> None:
    async def run() -> tuple[str, Answer]:
        answers = OpenAnswers(stall_after_s=60)
        answer = Answer(3)
        pump = answers.start(lambda: iter(answer))
        text = "".join([piece async for piece in pump])
        for _ in range(100):
            if answers.in_flight() == 0:
                break
            await asyncio.sleep(0.01)
        assert answers.in_flight() == 0
        return text, answer

    text, answer = asyncio.run(run())
    assert text == "piece0 piece1 piece2 "
    assert answer.closed_on == "answer-pump"


@pytest.mark.parametrize("reason", [CLIENT_GONE, SHUTTING_DOWN])
def test_a_cancelled_answer_stops_after_the_piece_in_flight_and_is_closed(reason: str) -> None:
    hold = threading.Event()
    answer = Answer(1000, hold)

    async def run() -> None:
        answers = OpenAnswers(stall_after_s=60)
        pump = answers.start(lambda: iter(answer))
        assert await anext(pump) == "piece0 "
        if reason == SHUTTING_DOWN:
            answers.cancel_all()
        else:
            pump.cancel(reason)
        hold.set()
        with pytest.raises(AnswerCancelled, match=reason):
            async for _ in pump:
                pass
        for _ in range(500):
            if answer.closed_on is not None:
                break
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert answer.closed_on == "answer-pump"  # closed (the model's turn freed) by the pump, not by the GC
    assert answer.sent <= 3  # not the whole answer


def test_an_error_reaches_the_reader() -> None:
    def failing() -> Iterator[str]:
        yield "a"
        raise RuntimeError("the model broke")

    async def run() -> None:
        pump = OpenAnswers(stall_after_s=60).start(failing)
        assert await anext(pump) == "a"
        with pytest.raises(RuntimeError, match="the model broke"):
            await anext(pump)

    asyncio.run(run())


def test_stalled_reports_answers_in_flight_without_progress() -> None:
    clock = FakeClock()
    hold = threading.Event()
    answers = OpenAnswers(stall_after_s=120, clock=clock)

    async def run() -> None:
        assert answers.stalled() == ""
        pump = answers.start(lambda: iter(Answer(3, hold)))
        assert await anext(pump) == "piece0 "  # then it hangs, as a stuck generator does
        clock.now += 100
        assert answers.stalled() == ""
        clock.now += 50
        assert answers.stalled() == (
            "no answer has produced anything for 150 s while 1 request(s) are in flight (limit 120 s): the generator "
            "looks stuck; see the server log, restart the server")
        hold.set()
        async for _ in pump:
            pass
        for _ in range(100):
            if answers.in_flight() == 0:
                break
            await asyncio.sleep(0.01)
        assert answers.stalled() == ""  # nothing in flight: nothing stuck

    asyncio.run(run())
