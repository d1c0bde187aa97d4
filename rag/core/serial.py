"""One long-lived background thread that runs submitted jobs one after another.

A chat model generates each answer on a background thread. A fresh thread per answer pays, on CUDA, the per-thread
set-up of the GPU libraries (cuBLAS handles and workspaces, the current device and stream) before its first kernel:
tens of milliseconds that showed up between ``stream()`` and the first piece of every answer. :class:`SerialWorker`
keeps one thread for the model's lifetime instead; the jobs are already serialised by the model's FIFO turns, so one
thread loses no concurrency. The thread is a daemon and starts with the first job, so an idle model costs nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class SerialWorker:
    """Run jobs in submission order on one daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> threading.Event:
        """Queue ``job``; the returned event is set when it has run (an exception it raises is logged and the worker
        goes on with the next job: report errors to the caller inside the job)."""
        done = threading.Event()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._jobs.put((job, done))
        return done

    def is_current(self) -> bool:
        """Whether the caller runs on the worker thread (waiting there for a job would wait for itself)."""
        return threading.current_thread() is self._thread

    def _loop(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            except Exception:  # one failing job must not end the thread that serves the others
                logger.exception("a job on the %s thread failed", self.name)
            finally:
                done.set()
