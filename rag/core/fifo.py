"""A first-come-first-served lock for one model shared by many request threads.

:class:`rag.llm.hf.model.HFChatModel` serves requests one at a time in arrival order with it (``threading.Lock`` is
unfair: a thread that releases and re-acquires in a loop can starve the others), and tells how many wait.
Kept apart because nothing in it is about models: it is a small concurrency primitive with its own tests' worth of
edge cases (a waiter interrupted before its turn must not block the ones behind it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class FifoTurns:
    """A first-come-first-served lock: callers get tickets and run in ticket order (``threading.Lock`` is unfair)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0  # handed to the next caller
        self._serving = 0  # the ticket that may run now
        self._abandoned: set[int] = set()  # tickets whose caller gave up waiting (interrupted)

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this caller's turn, hold it for the ``with`` body, then hand it to the next ticket."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                self._cond.wait_for(lambda: self._serving == ticket)
            except BaseException:  # interrupted while waiting: never block the tickets behind this one
                if self._serving == ticket:
                    self._advance()
                else:
                    self._abandoned.add(ticket)
                raise
        try:
            yield
        finally:
            with self._cond:
                self._advance()

    def waiting(self) -> int:
        """Callers waiting for their turn (not counting the one running)."""
        with self._cond:
            return max(0, self._next_ticket - self._serving - len(self._abandoned) - 1)
