"""Secrets and exposure: the page and the API bind to loopback by default; with a password (page) or an API key
(``rag.cli.serve``) set, a request without it reaches nothing; neither secret ever shows in a log or in the page.

The page runs as in ``tests/browser/test_page_load.py`` (``streamlit run app.py``, hash embedder, extractive backend), driven
by Debian's headless Chromium; ``rag.cli.serve`` runs with ``--debug`` (uvicorn's most talkative log level).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.core.config import REPO_ROOT, load_config
from rag.embed.embedder import HashEmbedder
from rag.index.sync import sync_folder
from tests.browser.test_page_load import DOCS, TIMEOUT_MS, PageServer, headless_chromium, serve_page, write_docs

from playwright.sync_api import Page, expect  # isort: skip  (test_browser skips without it)

pytestmark = pytest.mark.integration

PASSWORD = "Kq7-页面口令-s3cret-4821"
API_KEY = "sk-kbqa-exposure-5c1f9e0d77"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def non_loopback_addresses() -> list[str]:
    """This machine's addresses other than loopback (``hostname -I``)."""
    try:
        words = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [w for w in words if not w.startswith("127.") and w != "::1" and not w.startswith("fe80:")]


def can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium() as chromium:
        yield chromium


# --- bind address ---------------------------------------------------------------------------------------------------


def test_the_defaults_bind_to_loopback() -> None:
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1"
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    app_target = re.search(r"(?m)^app:.*\n((?:\t.*\n)+)", makefile)
    assert app_target, "the Makefile has no app target"
    assert "streamlit run app.py" in app_target.group(1)
    assert "--server.address 127.0.0.1" in app_target.group(1)
    from rag.cli.serve import parse_args

    assert parse_args([]).host == "127.0.0.1"


def test_page_started_without_an_address_flag_is_loopback_only(tmp_path: Path) -> None:
    """``streamlit run app.py`` with no ``--server.address``: config.toml's 127.0.0.1 applies."""
    with serve_page(tmp_path, write_docs(tmp_path / "knowledge", DOCS[:2]), bind_loopback=False) as server:
        port = int(server.url.rsplit(":", 1)[1])
        assert can_connect("127.0.0.1", port)
        try:
            import psutil
        except ImportError:
            psutil = None
        if psutil is not None:  # the listening socket itself
            listening = {c.laddr.ip for c in psutil.Process(server.process.pid).net_connections("inet")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
            assert listening == {"127.0.0.1"}, listening
        others = non_loopback_addresses()
        if not others:
            pytest.skip("this machine has only loopback addresses (hostname -I): nothing to try from outside")
        reached = [address for address in others if can_connect(address, port)]
        assert not reached, f"the page answers on {reached}"
        print(f"\nbind: listening on 127.0.0.1:{port} only; refused on {', '.join(others)}")


# --- the page with a password ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageServer]:
    tmp = tmp_path_factory.mktemp("locked")
    with serve_page(tmp, write_docs(tmp / "knowledge"), env={"KBQA_PASSWORD": PASSWORD}) as running:
        yield running


def assert_locked(page: Page, server: PageServer) -> None:
    """Only the password form: no chat input, no document, no index figures, no folder."""
    expect(page.get_by_label("密码", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)  # the script has stopped after the form; let the last deltas arrive
    expect(page.get_by_test_id("stChatInputTextArea")).to_have_count(0)
    text = page.locator("body").inner_text()
    html = page.content()
    for doc in DOCS:
        assert doc.source not in text and doc.source not in html, f"{doc.source} shown before the password"
        assert doc.evidence not in html
    for leak in ("个文件", "文本块", "hash-embedder", "extractive", str(server.knowledge)):
        assert leak not in text and leak not in html, f"{leak!r} shown before the password"
    assert PASSWORD not in html


def test_password_locks_the_page(browser: Any, locked_server: PageServer) -> None:
    page = open_session(browser, locked_server)
    assert_locked(page, locked_server)

    page.get_by_label("密码", exact=True).fill("wrong-" + PASSWORD[:4])
    page.get_by_role("button", name="进入").click()
    expect(page.get_by_text("密码不正确。")).to_be_visible(timeout=TIMEOUT_MS)
    assert_locked(page, locked_server)

    page.get_by_label("密码", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="进入").click()
    box = page.get_by_test_id("stChatInputTextArea")
    expect(box).to_be_visible(timeout=TIMEOUT_MS)
    box.fill(DOCS[0].question)
    box.press("Enter")
    expect(page.get_by_test_id("stChatMessage").last).to_contain_text(DOCS[0].evidence, timeout=TIMEOUT_MS)
    assert PASSWORD not in page.content(), "the password is in the page after logging in"

    other = open_session(browser, locked_server)  # a second browser is not let in by the first one's login
    assert_locked(other, locked_server)

    for path in ("/", "/_stcore/health", "/_stcore/host-config", "/_stcore/script-health-check"):
        reply = httpx.get(locked_server.url + path, timeout=10)
        assert PASSWORD not in reply.text and DOCS[0].source not in reply.text, path
    log = locked_server.output()
    assert PASSWORD not in log, "the password is in the server log"
    assert "Traceback" not in log, log[-3000:]
    for opened in (page, other):
        opened.context.close()


def open_session(browser: Any, server: PageServer) -> Page:
    """A fresh browser session that has not logged in (open_pages waits for a chat input, which is not there)."""
    page = browser.new_context(locale="zh-CN").new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url)
    return page


# --- the API with a key ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``python -m rag.serve --debug`` with ``$KBQA_API_KEY`` on a free loopback port: (url, log file)."""
    tmp = tmp_path_factory.mktemp("api")
    overrides = ["embed.source=hash", "llm.backend=extractive", "load.workers=1"]
    index = tmp / "index"
    sync_folder(write_docs(tmp / "knowledge"), load_config(None, [*overrides, f"index.dir={index}"]), HashEmbedder())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log_path = tmp / "serve.log"
    env = {**os.environ, "KBQA_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "rag.serve", "--debug", "--index", str(index), "--port",
                                    str(port), *overrides], cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while not can_connect("127.0.0.1", port):
                assert process.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, "rag.cli.serve did not start within 30 s"
                time.sleep(0.1)
            yield url, log_path
        finally:
            process.terminate()
            process.wait(10)


def test_api_key_guards_every_endpoint_but_health(api: tuple[str, Path]) -> None:
    url, log_path = api
    good = {"Authorization": f"Bearer {API_KEY}"}
    schema = httpx.get(f"{url}/openapi.json", headers=good, timeout=10).json()
    routes = [(method.upper(), path) for path, item in schema["paths"].items() for method in item]
    routes += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/docs/oauth2-redirect"),
               ("GET", "/no-such-page"), ("GET", "/v1/models/"), ("GET", "//v1/models"), ("GET", "/HEALTH"),
               ("GET", "/health/"), ("GET", "/v1/models?path=/health")]
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/v1/models") in routes
    body = {"model": "kbqa", "messages": [{"role": "user", "content": DOCS[0].question}]}
    wrong_keys = [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer wrong"},
                  {"Authorization": API_KEY}, {"Authorization": f"Basic {API_KEY}"},
                  {"Authorization": f"Bearer {API_KEY[:-1]}"}, {"X-Api-Key": API_KEY}]
    checked = 0
    for method, path in routes:
        if path == "/health":
            continue
        for headers in wrong_keys:
            reply = httpx.request(method, url + path, headers=headers, json=body if method == "POST" else None,
                                  timeout=10)
            assert reply.status_code == 401, (method, path, headers, reply.status_code, reply.text[:200])
            assert API_KEY not in reply.text and DOCS[0].evidence not in reply.text
            checked += 1
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 200 and API_KEY not in health.text and health.json() == {"status": "ok"}

    answer = httpx.post(f"{url}/v1/chat/completions", headers=good, json=body, timeout=30)
    assert answer.status_code == 200 and DOCS[0].evidence in answer.json()["choices"][0]["message"]["content"]
    streamed = httpx.post(f"{url}/v1/chat/completions", headers=good, json={**body, "stream": True}, timeout=30)
    assert streamed.status_code == 200 and DOCS[0].evidence in streamed.text
    time.sleep(0.3)  # the access log line of the last request
    log = log_path.read_text(encoding="utf-8", errors="replace")
    assert log.strip(), "rag.cli.serve wrote nothing: the log check would prove nothing"
    assert API_KEY not in log, "the API key is in the server log"
    print(f"\napi: {checked} unauthenticated requests over {len(routes) - 1} routes, all 401; /health 200; "
          f"key absent from {len(log.splitlines())} log lines")
