"""The answers the served API is producing: each one pumped by its own thread, cancelled when its client hangs up or
the server stops, and watched for a stuck generator.

A model's answer is a blocking iterator (:meth:`rag.llm.base.ChatModel.stream`, :class:`rag.answer.pipeline.AnswerStream`)
and must be closed by whoever iterates it: closing cancels the generation and frees the model for the next request
(issue 17: an answer dropped by its client and never closed kept the model's turn for good and every later request
waited forever). So one :class:`AnswerPump` thread runs the whole iterator, hands its items to the event loop, and
closes the iterator itself however it ends (the same thread, so closing is always allowed): at the end of the answer,
on an error, or after the item in flight when :meth:`AnswerPump.cancel` was called (client gone, server stopping).
The event loop never waits on a blocking call, so a stopping server is never held up by an answer.

:class:`OpenAnswers` keeps the pumps running now: ``cancel_all`` at shutdown, and :meth:`OpenAnswers.stalled` for
``/health`` (answers in flight and none of them has produced anything for longer than the limit: a stuck generator).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

SHUTTING_DOWN = "the server is shutting down"
CLIENT_GONE = "the client closed the connection"


class AnswerCancelled(Exception):
    """The answer was cancelled before it ended; the message says why (client gone, server stopping)."""


class AnswerPump:
    """Runs one answer's iterator in its own thread and hands its items to the event loop that started it.

    Create it in the event loop (:meth:`OpenAnswers.start`); iterate it with ``async for`` / ``anext`` (raises
    :class:`AnswerCancelled` when cancelled, or the iterator's own exception).
    """

    def __init__(self, owner: OpenAnswers, produce: Callable[[], Iterator[Any]]) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        self.started = owner.clock()
        self._thread = threading.Thread(target=self._run, args=(produce,), name="answer-pump", daemon=True)

    def _post(self, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server has stopped, nobody reads any more
            self._stop.set()

    def _run(self, produce: Callable[[], Iterator[Any]]) -> None:
        iterator: Iterator[Any] | None = None
        try:
            iterator = produce()
            for item in iterator:
                self._owner.progress()
                if self._stop.is_set():  # cancelled while this item was being made
                    break
                self._post("item", item)
            self._post("end", None)
        except BaseException as exc:  # handed to the reader, which raises it
            self._post("error", exc)
        finally:
            try:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()  # cancels the generation and frees the model's turn
            except Exception:
                log.exception("closing an answer failed")
            self._owner.finished(self)

    def start(self) -> None:
        self._thread.start()

    def cancel(self, reason: str) -> None:
        """Stop the answer after the item in flight (any thread); the reader gets :class:`AnswerCancelled`."""
        if not self._stop.is_set():
            self._stop.set()
            self._post("cancelled", reason)

    def __aiter__(self) -> AnswerPump:
        return self

    async def __anext__(self) -> Any:
        kind, value = await self._queue.get()
        if kind == "item":
            return value
        if kind == "end":
            raise StopAsyncIteration
        if kind == "cancelled":
            raise AnswerCancelled(value)
        raise value

    async def cancel_on_disconnect(self, receive: Callable[[], Any]) -> None:
        """Wait for the client to hang up (ASGI ``http.disconnect``), then cancel; run it as a task."""
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                self.cancel(CLIENT_GONE)
                return


class OpenAnswers:
    """The answers in flight, for cancelling them all at shutdown and for telling ``/health`` about a stuck one.

    Args:
        stall_after_s: answers in flight with no item produced by any of them for longer than this is "stuck".
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after_s = stall_after_s
        self.clock = clock
        self._lock = threading.Lock()
        self._open: set[AnswerPump] = set()
        self._last_progress = clock()
        self._closing = False

    def start(self, produce: Callable[[], Iterator[Any]]) -> AnswerPump:
        """A running pump over ``produce()`` (called in the pump's thread); call in the event loop."""
        pump = AnswerPump(self, produce)
        with self._lock:
            self._open.add(pump)
            closing = self._closing
        pump.start()
        if closing:
            pump.cancel(SHUTTING_DOWN)
        return pump

    def progress(self) -> None:
        with self._lock:
            self._last_progress = self.clock()

    def finished(self, pump: AnswerPump) -> None:
        with self._lock:
            self._open.discard(pump)
            self._last_progress = self.clock()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._open)

    def cancel_all(self) -> None:
        """Cancel every answer in flight and any started from now on (server shutdown; any thread)."""
        with self._lock:
            self._closing = True
            pumps = list(self._open)
        for pump in pumps:
            pump.cancel(SHUTTING_DOWN)

    def stalled(self) -> str:
        """Why generation looks stuck ("" when it does not): answers in flight and none made progress for too long."""
        with self._lock:
            if not self._open:
                return ""
            since = max(self._last_progress, min(p.started for p in self._open))
            waiting, idle_s = len(self._open), self.clock() - since
        if idle_s <= self.stall_after_s:
            return ""
        return (f"no answer has produced anything for {idle_s:.0f} s while {waiting} request(s) are in flight "
                f"(limit {self.stall_after_s:.0f} s): the generator looks stuck; see the server log, restart the server")
