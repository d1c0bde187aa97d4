"""rag.core.fifo.FifoTurns: the one first-come-first-served lock (the HF model's requests, the page's answers)."""

from __future__ import annotations

import threading
import time

import pytest

from rag.core.fifo import FifoTurns, TurnTimeout


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_serves_first_come_first_served_and_reports_places() -> None:
    turns = FifoTurns(slots=1)
    order: list[str] = []
    seen: dict[str, list[int]] = {"b": [], "c": []}
    hold = threading.Event()

    def first() -> None:
        with turns.turn():
            order.append("a")
            hold.wait(5)

    def later(name: str) -> None:
        with turns.turn(on_wait=seen[name].append, poll_s=0.01):
            order.append(name)

    runner = threading.Thread(target=first)
    runner.start()
    while turns.busy() < 1:
        time.sleep(0.001)
    waiters = []
    for name in ("b", "c"):
        waiters.append(threading.Thread(target=later, args=(name,)))
        waiters[-1].start()
        while turns.waiting() < len(waiters):
            time.sleep(0.001)
    time.sleep(0.05)
    assert seen == {"b": [1], "c": [2]}
    hold.set()
    for thread in (runner, *waiters):
        thread.join(5)
    assert order == ["a", "b", "c"]
    assert seen["c"][0] == 2 and turns.busy() == 0


def test_a_waiter_that_gives_up_leaves_the_line() -> None:
    turns = FifoTurns(slots=1)

    class Closed(Exception):
        pass

    def hang_up(position: int) -> None:
        raise Closed  # what Streamlit does when the browser tab went away

    with turns.turn():
        with pytest.raises(Closed), turns.turn(on_wait=hang_up):
            pass
        assert turns.waiting() == 0
        with pytest.raises(TurnTimeout, match="waited 0 s for a turn; 2 ahead"), turns.turn(timeout_s=0.05, poll_s=0.01):
            pass
    with turns.turn():  # nothing left blocked
        assert turns.busy() == 1


def test_two_slots_run_two_at_once_and_an_error_frees_its_slot() -> None:
    turns = FifoTurns(slots=2)
    with turns.turn(), turns.turn():
        assert turns.busy() == 2
    with pytest.raises(RuntimeError), turns.turn():
        raise RuntimeError("generation failed")
    assert turns.busy() == 0
    with pytest.raises(ValueError, match="slots=0 must be at least 1"):
        FifoTurns(0)


def test_a_turn_released_from_another_thread_hands_the_lock_on() -> None:
    """The HF model's generation thread gives back the turn its request's thread took."""
    turns = FifoTurns()
    ticket = turns.acquire()
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(turns.acquire()))
    waiter.start()
    while turns.waiting() < 1:
        time.sleep(0.001)
    releaser = threading.Thread(target=turns.release, args=(ticket,))
    releaser.start()
    releaser.join(5)
    waiter.join(5)
    assert got and got[0] != ticket
    turns.release(ticket)  # twice: harmless, the new holder keeps its turn
    assert turns.busy() == 1
    turns.release(got[0])
    assert turns.busy() == 0


def test_held_s_tells_how_long_the_oldest_turn_is_held() -> None:
    clock = FakeClock()
    turns = FifoTurns(slots=2, clock=clock)
    assert turns.held_s() == 0.0
    first = turns.acquire()
    clock.now += 30
    second = turns.acquire()
    clock.now += 15
    assert turns.held_s() == 45.0
    turns.release(first)
    assert turns.held_s() == 15.0
    turns.release(second)
    assert turns.held_s() == 0.0
