"""Dropped streams against the real served API (`python -m rag.serve`, HF backend, a tiny random model, loopback):
clients that read a little of a streamed answer and hang up must never leave the model's turn taken (issue 17 #1),
and SIGTERM stops the server within seconds even with streams open."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rag.core.config import load_config
from rag.embed.embedder import HashEmbedder
from rag.index.sync import sync_folder
from tests.conftest import write_corpus

REPO = Path(__file__).resolve().parents[2]
FILES = {"制度/年假.md": "# 年假制度\n\n工作满一年不满十年的员工，每年享受五天带薪年假。年假需提前三个工作日在 OA 系统中申请。\n"}
BODY = {"model": "kbqa", "stream": True, "max_tokens": 400, "kbqa": {"rag": False},
        "messages": [{"role": "user", "content": "年假需要提前几天申请？"}]}
ANSWERED_WITHIN_S = 5.0  # the bound for the next request after the drops

pytestmark = pytest.mark.integration


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(root: Path, index: Path, model_dir: Path, *extra: str) -> Server:
    port = free_port()
    log = root / f"server-{port}.log"
    overrides = ["embed.source=hash", "llm.backend=hf", f"llm.model={model_dir}", "llm.source=local",
                 "llm.max_new_tokens=400", *extra]
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rag.serve", "--index", str(index), "--port", str(port),
                                 *overrides], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"rag.serve exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"rag.serve did not answer /health within 120 s:\n{server.output()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    pytest.importorskip("uvicorn")
    from tests.tinymodels import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("serve-drops")
    index = root / "index"
    cfg = load_config(None, ["embed.source=hash", "load.workers=1", f"index.dir={index}"])
    sync_folder(write_corpus(root / "kb", FILES), cfg, HashEmbedder())
    model_dir = build_tiny_causal_lm(root, "glm", "chatglm3")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config["max_position_embeddings"] = 4096  # long answers: the streams must still be running when dropped
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return root, index, model_dir


@pytest.fixture(scope="module")
def server(setup: tuple[Path, Path, Path]) -> Iterator[Server]:
    server = start(*setup)
    try:
        yield server
    finally:
        server.proc.kill()
        server.proc.wait(10)


def drop_one_stream(port: int, read_bytes: int = 300) -> None:
    """Send a streaming chat completion, read ``read_bytes`` of the answer, hang up (as a closed browser tab does)."""
    payload = json.dumps(BODY).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        received = b""
        while len(received) < read_bytes:
            data = sock.recv(read_bytes - len(received))
            if not data:
                break
            received += data
    assert received.startswith(b"HTTP/1.1 200"), received[:200]


def answer_time(server: Server) -> float:
    """Seconds until a complete (short) non-streaming answer comes back; fails the test after 60 s."""
    started = time.monotonic()
    try:
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                           json={**BODY, "stream": False, "max_tokens": 4})
    except httpx.TimeoutException:
        pytest.fail(f"no answer within 60 s after the dropped streams; server output:\n{server.output()[-3000:]}")
    assert reply.status_code == 200, reply.text
    return time.monotonic() - started


@pytest.mark.parametrize(("sequential", "concurrent"), [
    (12, 12),  # before the fix about 8 drops hung the server for good
    pytest.param(100, 20, marks=pytest.mark.slow),  # the bound; minutes on a busy 2-core machine
])
def test_dropped_streams_leave_the_model_free(server: Server, sequential: int, concurrent: int) -> None:
    for _ in range(sequential):
        drop_one_stream(server.port)
    assert answer_time(server) < ANSWERED_WITHIN_S
    with ThreadPoolExecutor(concurrent) as pool:
        list(pool.map(drop_one_stream, [server.port] * concurrent))
    assert answer_time(server) < ANSWERED_WITHIN_S
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert "cannot join current thread" not in server.output()


def test_sigterm_stops_the_server_with_streams_open(server: Server) -> None:
    """After dropped streams (before the fix: threads stuck for good, SIGTERM ignored), one long answer streaming and
    two waiting for the model: SIGTERM ends them and the server. Runs last: it stops the server."""
    for _ in range(10):
        drop_one_stream(server.port)
    streaming, hang_up = threading.Event(), threading.Event()

    def open_stream() -> None:
        long_answer = {**BODY, "max_tokens": 3500}  # many seconds of tokens: uvicorn alone would wait for them
        try:
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=long_answer, timeout=60) as response:
                next(response.iter_bytes())
                streaming.set()
                hang_up.wait(60)
        except httpx.HTTPError:
            pass  # cut off by the server going away

    clients = [threading.Thread(target=open_stream, daemon=True) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        streaming.wait(20)  # usually one has started; SIGTERM must work either way
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rag.serve still running 30 s after SIGTERM:\n{server.output()[-3000:]}")
        assert time.monotonic() - started < 5.0
    finally:
        hang_up.set()
        for client in clients:
            client.join(10)
