"""The worker processes behind :func:`rag.ingest.load.parse_files`: the parent's pool, the pipe protocol, the worker loop.

A worker is a fresh interpreter (``python -c``, never ``fork``: the parent may hold torch and threads) started with
``from rag.ingest.load import worker_main``; it caps its own address space, says it is ready, then parses one request at a
time. Requests and replies are length-prefixed JSON frames (an 8-byte big-endian length, then UTF-8 JSON), so a worker
that a hostile file took over cannot make the parent unpickle anything. The parent (:class:`WorkerPool`) keeps up to
``load.workers`` of them busy, kills a parse that runs past ``load.timeout_s``, tells a crash from running out of
memory, and replaces dead workers.

The time limit counts only the worker's own parsing, whatever the parent is doing: :func:`parse_files` is a generator,
and its caller may embed an earlier file for minutes between two results. So a worker says when it starts a file (a
small ``started`` frame with its ``time.monotonic()``, the same system-wide clock as the parent's on Linux), the parent
reads every waiting byte before it judges a deadline, and once the first bytes of the reply have come the parse is
over and nothing is killed as a timeout (a reply of several MB crosses the 64 KB pipe in many reads, and between two
of them the pipe can be empty). Kept apart from :mod:`rag.ingest.load` so that module reads as discovery and the
parsing contract; the parse function itself is passed in (:func:`serve`), so imports point one way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import resource
import select
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from rag.core.config import LoadConfig
from rag.core.errors import LoadError
from rag.core.types import Document, ParsedFile
from rag.ingest.parsers.text import MIB

logger = logging.getLogger(__name__)

# "1": in a worker, "__sleep__" in a file name hangs, "__crash__" aborts, "__slowreply__" sends the reply slowly
TEST_HOOKS_ENV = "KBQA_TEST_PARSE_HOOKS"
STARTUP_TIMEOUT_S = 60.0  # a worker that is not ready by then is replaced
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_HEADER_BYTES = 8  # a frame is an 8-byte big-endian length, then that many bytes of UTF-8 JSON
ParseFn = Callable[[Path, str, LoadConfig, Path | None], tuple[list[Document], str]]  # rag.ingest.load.parse_file_at


def memory_message(cfg: LoadConfig) -> str:
    return f"parsing needed more than {cfg.memory_mb} MB of memory (load.memory_mb); the file was skipped"


def _timeout_message(cfg: LoadConfig) -> str:
    return f"parsing took longer than {cfg.timeout_s:g} s (load.timeout_s); the file was skipped"


# --- the parent side --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Worker:
    process: subprocess.Popen[bytes]
    stderr: IO[bytes]
    started: float
    buffer: bytearray = dataclasses.field(default_factory=bytearray)
    ready: bool = False
    job: tuple[Path, str] | None = None
    job_assigned: float = 0.0  # when the parent sent the request (parent's clock)
    parse_started: float | None = None  # when the worker began parsing it (its ``started`` frame), None before that

    def parse_deadline(self, timeout_s: float) -> float:
        """When this job's parse passes ``timeout_s``; ``inf`` once its reply is arriving (the parse is over)."""
        if self.parse_started is None:  # the worker has not said it started: count from the request
            return self.job_assigned + timeout_s
        if self.buffer:  # the start of the reply frame is here (complete frames never stay in the buffer)
            return float("inf")
        return self.parse_started + timeout_s

    def parse_seconds(self) -> float:
        return time.monotonic() - (self.job_assigned if self.parse_started is None else self.parse_started)


class WorkerPool:
    """Worker processes, a selector on their reply pipes, and the deadlines of their jobs."""

    def __init__(self, cfg: LoadConfig, root: Path | None = None) -> None:
        self.cfg = cfg
        self.root = root  # files are read only under it (rag.core.paths.open_inside)
        self.workers: list[_Worker] = []
        self.selector = selectors.DefaultSelector()
        self.failed_starts = 0
        self.last_stderr = ""
        self.max_reply = int(cfg.max_file_mb * 16 + 64) * MIB  # JSON of the text of a max-size file

    def run(self, queue: deque[tuple[Path, str]]) -> Iterator[ParsedFile]:
        while queue or any(worker.job for worker in self.workers):
            busy = sum(1 for worker in self.workers if worker.job)
            while len(self.workers) < min(self.cfg.workers, busy + len(queue)):
                self._start()
            for worker in self.workers:
                if worker.ready and worker.job is None and queue:
                    self._assign(worker, queue)
            deadlines = [w.parse_deadline(self.cfg.timeout_s) if w.job else w.started + STARTUP_TIMEOUT_S
                         for w in self.workers if w.job or not w.ready]
            finite = [deadline for deadline in deadlines if deadline != float("inf")]
            if finite:
                wait = max(0.0, min(finite) - time.monotonic())
            else:  # only replies in flight (wait for their bytes; 1 s is a backstop), or none left to wait on
                wait = 1.0 if deadlines else 0.0
            for key, _ in self.selector.select(wait):
                yield from self._read(key.data)
            yield from self._expire()
            if self.failed_starts >= 3:  # workers die before they can take a file: report instead of looping
                tail = " ".join(self.last_stderr.split())[-300:]
                while queue:
                    yield ParsedFile(queue.popleft()[1], error_kind="crashed",
                                     error=f"the parser worker process could not start: {tail}")

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
        # glibc reserves 64 MB of address space per thread arena; OCR's onnxruntime threads would spend the cap on it
        env.setdefault("MALLOC_ARENA_MAX", "2")
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker; read on a crash)
        code = "from rag.ingest.load import worker_main; worker_main()"
        process = subprocess.Popen([sys.executable, "-c", code, str(self.cfg.memory_mb)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=stderr, env=env)
        worker = _Worker(process, stderr, time.monotonic())
        self.workers.append(worker)
        assert process.stdout is not None
        self.selector.register(process.stdout, selectors.EVENT_READ, worker)

    def _assign(self, worker: _Worker, queue: deque[tuple[Path, str]]) -> None:
        worker.job = queue.popleft()
        worker.job_assigned = time.monotonic()
        worker.parse_started = None
        request = {"path": str(worker.job[0]), "source": worker.job[1], "cfg": dataclasses.asdict(self.cfg),
                   "root": str(self.root) if self.root is not None else None}
        try:
            assert worker.process.stdin is not None
            worker.process.stdin.write(_frame(request))
            worker.process.stdin.flush()
        except OSError:  # it died while idle: give the file to another worker
            queue.appendleft(worker.job)
            worker.job = None
            self.failed_starts += 1
            self._stop(worker)

    def _read(self, worker: _Worker) -> Iterator[ParsedFile]:
        assert worker.process.stdout is not None
        chunk = os.read(worker.process.stdout.fileno(), 1 << 20)
        if not chunk:
            yield from self._died(worker)
            return
        worker.buffer += chunk
        if len(worker.buffer) > self.max_reply and worker.job:
            yield self._fail(worker, "corrupt", f"the parser's output passed {self.max_reply >> 20} MB; skipped")
            return
        while len(worker.buffer) >= _HEADER_BYTES:
            size = int.from_bytes(worker.buffer[:_HEADER_BYTES], "big")
            if len(worker.buffer) < _HEADER_BYTES + size:
                return
            payload = bytes(worker.buffer[_HEADER_BYTES : _HEADER_BYTES + size])
            del worker.buffer[: _HEADER_BYTES + size]
            if worker.job is None:  # the start-up handshake
                worker.ready = True
                self.failed_starts = 0
                continue
            source, seconds = worker.job[1], worker.parse_seconds()
            try:
                reply = json.loads(payload)
                if worker.parse_started is None and "started" in reply:  # the worker began parsing the file
                    # its clock is the parent's (CLOCK_MONOTONIC); clamped in case a platform's is not
                    worker.parse_started = min(max(float(reply["started"]), worker.job_assigned), time.monotonic())
                    continue
                worker.job = None
                yield _parsed_from_reply(source, reply, float(reply.get("seconds", seconds)))
            except (ValueError, KeyError, TypeError) as exc:
                worker.job = None
                yield ParsedFile(source, error_kind="crashed", error=f"the parser process sent a bad reply ({exc})",
                                 seconds=seconds)
                reply = {"exit": True}
            if reply.get("exit"):
                self._stop(worker)
                return

    def _died(self, worker: _Worker) -> Iterator[ParsedFile]:
        code = worker.process.wait()
        worker.stderr.seek(max(0, worker.stderr.seek(0, os.SEEK_END) - 2000))
        self.last_stderr = worker.stderr.read().decode("utf-8", "replace")
        job = worker.job
        self._stop(worker)
        if job is None:
            self.failed_starts += not worker.ready
            return
        if code == -signal.SIGXCPU:
            kind, message = "timeout", _timeout_message(self.cfg)
        elif any(sign in self.last_stderr for sign in ("MemoryError", "Cannot allocate memory", "bad_alloc")):
            kind, message = "memory", memory_message(self.cfg)
        else:
            name = f" ({signal.Signals(-code).name})" if code < 0 and -code in signal.valid_signals() else ""
            kind, message = "crashed", f"the parser process crashed (exit code {code}{name}); the file was skipped"
        last_line = (self.last_stderr.strip().splitlines() or [""])[-1]
        logger.warning("the parser worker died on %s (exit code %s): %s", job[1], code, last_line)
        yield ParsedFile(job[1], error_kind=kind, error=message, seconds=worker.parse_seconds())

    def _expire(self) -> Iterator[ParsedFile]:
        for worker in list(self.workers):
            if not self._overdue(worker):
                continue
            # First read what came while the caller was busy with an earlier result: the start-up handshake, the
            # ``started`` frame (its time is what counts) or the start of the reply (then the parse is over).
            yield from self._drain(worker)
            if worker not in self.workers or not self._overdue(worker):
                continue
            if worker.job:
                logger.warning("killing the parser of %s after %.0f s", worker.job[1], self.cfg.timeout_s)
                yield self._fail(worker, "timeout", _timeout_message(self.cfg))
            else:
                self.failed_starts += 1
                self.last_stderr = "no reply within the start-up timeout"
                self._stop(worker)

    def _overdue(self, worker: _Worker) -> bool:
        if worker.job:
            return time.monotonic() > worker.parse_deadline(self.cfg.timeout_s)
        return not worker.ready and time.monotonic() - worker.started > STARTUP_TIMEOUT_S

    def _drain(self, worker: _Worker) -> Iterator[ParsedFile]:
        """Read what is waiting in ``worker``'s pipe now, without blocking, until its reply or handshake is in."""
        assert worker.process.stdout is not None
        while (worker in self.workers and (worker.job or not worker.ready)
               and select.select([worker.process.stdout], [], [], 0)[0]):
            yield from self._read(worker)

    def _fail(self, worker: _Worker, kind: str, message: str) -> ParsedFile:
        assert worker.job is not None
        parsed = ParsedFile(worker.job[1], error_kind=kind, error=message, seconds=worker.parse_seconds())
        worker.job = None
        self._stop(worker)
        return parsed

    def _stop(self, worker: _Worker, grace_s: float = 0.0) -> None:
        """Unregister and end a worker: close its stdin (it exits on EOF) and kill it after ``grace_s``."""
        assert worker.process.stdin is not None and worker.process.stdout is not None
        if worker in self.workers:
            self.workers.remove(worker)
            self.selector.unregister(worker.process.stdout)
        for stream in (worker.process.stdin, worker.process.stdout, worker.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            worker.process.wait(timeout=grace_s if worker.job is None else 0)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()

    def close(self) -> None:
        for worker in list(self.workers):
            self._stop(worker, grace_s=2.0)
        self.selector.close()


def _parsed_from_reply(source: str, reply: dict[str, Any], seconds: float) -> ParsedFile:
    sha256 = str(reply.get("sha256", ""))
    if reply.get("error_kind"):
        return ParsedFile(source, error_kind=str(reply["error_kind"]), error=str(reply["error"]), seconds=seconds,
                          sha256=sha256)
    documents = tuple(
        Document(str(d["text"]), str(d["source"]), d["page"], tuple(map(str, d["heading"])), dict(d["metadata"]))
        for d in reply["documents"]
    )
    pages = int(documents[0].metadata.get("page_count", 1)) if documents else 1
    return ParsedFile(source, documents, seconds=seconds, pages=pages, sha256=sha256)


def _frame(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message, ensure_ascii=False).encode("utf-8", "replace")  # a lone surrogate becomes "?"
    return len(payload).to_bytes(_HEADER_BYTES, "big") + payload


# --- the worker side --------------------------------------------------------------------------------------------


def _read_frame(stream: IO[bytes]) -> dict[str, Any] | None:
    header = stream.read(_HEADER_BYTES)
    if len(header) < _HEADER_BYTES:
        return None
    message: dict[str, Any] = json.loads(stream.read(int.from_bytes(header, "big")))
    return message


def serve(parse: ParseFn) -> None:
    """Body of a worker process (``rag.ingest.load.worker_main``): cap memory, then answer parse requests on stdin until
    EOF, parsing each file with ``parse``."""
    replies = os.fdopen(os.dup(1), "wb")  # the protocol channel; anything a library prints goes to stderr
    os.dup2(2, 1)
    memory_mb = int(sys.argv[1])
    if memory_mb > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory_mb * MIB if hard == resource.RLIM_INFINITY else min(memory_mb * MIB, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    replies.write(_frame({"ready": True}))
    replies.flush()
    while (request := _read_frame(sys.stdin.buffer)) is not None:
        root = Path(request["root"]) if request.get("root") else None
        replies.write(_frame({"started": time.monotonic()}))  # the parent counts the time limit from here
        replies.flush()
        reply = _run_job(parse, Path(request["path"]), request["source"], LoadConfig(**request["cfg"]), root)
        frame = _frame(reply)
        if os.environ.get(TEST_HOOKS_ENV) == "1" and "__slowreply__" in Path(request["path"]).name:
            _write_slowly(replies, frame)
        else:
            replies.write(frame)
            replies.flush()
        if reply.get("exit"):
            return


def _write_slowly(replies: IO[bytes], frame: bytes) -> None:
    """Test hook: send a reply in 32 KB pieces (half a Linux pipe buffer) with pauses, as a worker that a busy machine
    keeps off the CPU does, so the parent finds the pipe empty between two reads of one reply."""
    piece = 1 << 15
    for offset in range(0, len(frame), piece):
        replies.write(frame[offset : offset + piece])
        replies.flush()
        time.sleep(0.02)


def _run_job(parse: ParseFn, path: Path, source: str, cfg: LoadConfig, root: Path | None) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu_cap = int(usage.ru_utime + usage.ru_stime + 2 * cfg.timeout_s + 10)  # backstop: the parent kills first
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_cap if hard == resource.RLIM_INFINITY else min(cpu_cap, hard), hard))
    if os.environ.get(TEST_HOOKS_ENV) == "1":
        if "__sleep__" in path.name:
            time.sleep(3600)
        if "__crash__" in path.name:
            os.abort()
    started = time.monotonic()
    try:
        documents, sha256 = parse(path, source, cfg, root)
    except LoadError as exc:
        seconds = time.monotonic() - started
        return {"error_kind": exc.kind, "error": str(exc), "seconds": seconds, "exit": exc.kind == "memory",
                "sha256": exc.sha256}
    return {"documents": [dataclasses.asdict(d) for d in documents], "seconds": time.monotonic() - started,
            "sha256": sha256}
