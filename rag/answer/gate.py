"""A process-wide first-come-first-served queue in front of answer generation, with a visible place in line.

Every browser session of the chat page runs in its own thread of one process and shares one loaded model. The
model backends serialise generation themselves (:class:`rag.llm.hf.model.HFChatModel` holds its model per request), but
they cannot tell a waiting user where they stand. :class:`GenerationGate` wraps a whole answer (retrieval, the
streamed generation, citation checks) so that at most ``slots`` answers run at once, the others wait in arrival
order, and a waiting caller is told its place (``on_wait(position)``, 1 = next) while it waits.

A caller that stops waiting (the browser tab closed: Streamlit raises inside ``on_wait``) leaves the line at once;
one that fails while running frees its slot. Nobody behind it is ever blocked.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class GateTimeout(TimeoutError):
    """Waited longer than ``timeout_s`` for a turn."""


class GenerationGate:
    """At most ``slots`` holders at a time; the rest wait first come, first served.

    Args:
        slots: answers generated at the same time (1 for one model on one GPU).
    """

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"slots={slots} must be at least 1")
        self.slots = slots
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._waiting: deque[int] = deque()  # tickets in arrival order
        self._running: set[int] = set()

    def _position(self, ticket: int) -> int:
        """1-based place of a waiting ticket (1 = next to run); call with the lock held."""
        return self._waiting.index(ticket) + 1

    def _may_run(self, ticket: int) -> bool:
        return len(self._running) < self.slots and bool(self._waiting) and self._waiting[0] == ticket

    @contextmanager
    def turn(self, on_wait: Callable[[int], None] | None = None, poll_s: float = 0.25,
             timeout_s: float | None = None) -> Iterator[None]:
        """Wait for a turn, hold it for the ``with`` body, then hand it on.

        Args:
            on_wait: called (outside the lock) with the caller's place in line whenever it changes while waiting;
                not called when the turn comes at once. An exception it raises abandons the place in line.
            poll_s: how often the waiting thread wakes up (also how quickly ``on_wait`` sees changes).
            timeout_s: give up after this long with :class:`GateTimeout`; None waits as long as it takes.
        """
        started = time.monotonic()
        with self._cond:
            ticket = next(self._tickets)
            self._waiting.append(ticket)
        shown = 0
        try:
            while True:
                with self._cond:
                    if self._may_run(ticket):
                        self._waiting.popleft()
                        self._running.add(ticket)
                        self._cond.notify_all()  # with free slots left, the next in line may start too
                        break
                    position = self._position(ticket)
                    if position == shown:
                        self._cond.wait(poll_s)
                        if self._may_run(ticket):
                            continue
                        position = self._position(ticket)
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise GateTimeout(f"waited {timeout_s:.0f} s for a turn; {self.busy()} answers ahead")
                if position != shown and on_wait is not None:
                    on_wait(position)
                shown = position
        except BaseException:
            with self._cond:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()
            raise
        try:
            yield
        finally:
            with self._cond:
                self._running.discard(ticket)
                self._cond.notify_all()

    def busy(self) -> int:
        """Answers running or waiting right now."""
        with self._cond:
            return len(self._running) + len(self._waiting)

    def waiting(self) -> int:
        """Callers waiting for a turn (not counting those running)."""
        with self._cond:
            return len(self._waiting)
