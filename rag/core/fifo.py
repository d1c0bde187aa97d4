"""The one first-come-first-served lock of the project: callers wait in arrival order for one of ``slots`` turns.

``threading.Lock`` is unfair (a thread that releases and re-acquires in a loop can starve the others), and neither
tells a waiter where it stands. :class:`FifoTurns` does both. It is used by :class:`rag.llm.hf.model.HFChatModel`
(one request at a time on the loaded model) and by the chat page (at most ``generation_slots`` whole answers at
once, each waiting user told its place in line).

A turn is a ticket: :meth:`FifoTurns.acquire` returns it, :meth:`FifoTurns.release` gives it back from *any*
thread (the model's generation thread frees the turn when generation ends, whoever holds the answer's generator),
and :meth:`FifoTurns.turn` wraps both around a ``with`` body. A waiter that stops waiting (an exception in
``on_wait``, a timeout) leaves the line at once; nobody behind it is ever blocked.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class TurnTimeout(TimeoutError):
    """Waited longer than ``timeout_s`` for a turn."""


class FifoTurns:
    """At most ``slots`` holders at a time; the rest wait first come, first served.

    Args:
        slots: turns held at the same time (1 for one model on one device).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, slots: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if slots < 1:
            raise ValueError(f"slots={slots} must be at least 1")
        self.slots = slots
        self._clock = clock
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._waiting: deque[int] = deque()  # tickets in arrival order
        self._running: dict[int, float] = {}  # ticket -> when its turn began

    def _may_run(self, ticket: int) -> bool:
        return len(self._running) < self.slots and bool(self._waiting) and self._waiting[0] == ticket

    def acquire(self, on_wait: Callable[[int], None] | None = None, poll_s: float = 0.25,
                timeout_s: float | None = None) -> int:
        """Wait for a turn and return its ticket; give it back with :meth:`release` (from any thread).

        Args:
            on_wait: called (outside the lock) with the caller's place in line whenever it changes while waiting
                (1 = next); not called when the turn comes at once. An exception it raises abandons the place.
            poll_s: how often a waiter with ``on_wait`` or ``timeout_s`` wakes up to check.
            timeout_s: give up after this long with :class:`TurnTimeout`; None waits as long as it takes.
        """
        started = self._clock()
        with self._cond:
            ticket = next(self._tickets)
            self._waiting.append(ticket)
        shown = 0
        wake_s = poll_s if on_wait is not None or timeout_s is not None else None
        try:
            while True:
                with self._cond:
                    if not self._may_run(ticket) and self._waiting.index(ticket) + 1 == shown:
                        self._cond.wait(wake_s)
                    if self._may_run(ticket):
                        self._waiting.popleft()
                        self._running[ticket] = self._clock()
                        self._cond.notify_all()  # with free slots left, the next in line may start too
                        return ticket
                    position = self._waiting.index(ticket) + 1
                if timeout_s is not None and self._clock() - started > timeout_s:
                    raise TurnTimeout(f"waited {timeout_s:.0f} s for a turn; {self.busy()} ahead")
                if position != shown and on_wait is not None:
                    on_wait(position)
                shown = position
        except BaseException:
            with self._cond:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()
            raise

    def release(self, ticket: int) -> None:
        """Give a turn back (any thread; releasing twice is harmless)."""
        with self._cond:
            if self._running.pop(ticket, None) is not None:
                self._cond.notify_all()

    @contextmanager
    def turn(self, on_wait: Callable[[int], None] | None = None, poll_s: float = 0.25,
             timeout_s: float | None = None) -> Iterator[int]:
        """Hold a turn for the ``with`` body (arguments as for :meth:`acquire`); it is released however it ends."""
        ticket = self.acquire(on_wait, poll_s, timeout_s)
        try:
            yield ticket
        finally:
            self.release(ticket)

    def busy(self) -> int:
        """Turns held or waited for right now."""
        with self._cond:
            return len(self._running) + len(self._waiting)

    def waiting(self) -> int:
        """Callers waiting for a turn (not counting those holding one)."""
        with self._cond:
            return len(self._waiting)

    def held_s(self) -> float:
        """How long the oldest turn held now has been held (0.0 when none is)."""
        with self._cond:
            return max((self._clock() - since for since in self._running.values()), default=0.0)
