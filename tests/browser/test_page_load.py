"""The chat page under load: ``streamlit run app.py`` on a tiny index, ten browser sessions asking at once.

One headless Chromium (Debian's, as in ``tests/browser/test_browser.py``) opens ten contexts, one per session; each asks a
different question whose answer lives in a different document, so cross-talk shows: every answer must cite its own
document and hold its own evidence, and no session's chat may show another session's question. The server's RSS is
read before, after a warm-up round and after three more rounds ("memory flat": growth after the warm-up stays under
``RSS_GROWTH_LIMIT_MB``). Backends: the extractive one, and (``slow``) a tiny random transformers model, whose
answers are noise but go through the one-slot generation queue. The upload limit (``KBQA_MAX_UPLOAD_MB=1``) is
enforced by the browser's uploader and, for a client that skips the browser check, by the page itself.

Figures are printed (``pytest -s``) and recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rag.core.config import REPO_ROOT, load_config
from rag.embed.embedder import HashEmbedder
from rag.index.sync import sync_folder
from tests.browser.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    free_port,
    goto_view,
    set_file_until_listed,
    stop_process,
    wait_healthy,
)

from playwright.sync_api import Page, Route, expect, sync_playwright  # isort: skip  (test_browser skips without it)

pytestmark = pytest.mark.integration

SESSIONS = 10
ROUNDS = 3  # after the warm-up round
ROUND_LIMIT_S = 60.0  # every session of a round answered within this (2-core CPU: 2-9 s in practice)
RSS_GROWTH_LIMIT_MB = 50.0  # server RSS growth from after the warm-up to after ROUNDS rounds
TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Doc:
    source: str  # path in the knowledge folder, as the source cards show it
    text: str
    question: str
    evidence: str  # in the document only; an extractive answer to ``question`` quotes it


DOCS = [
    Doc("员工食堂.md", "# 员工食堂\n\n员工食堂的午餐供应时间是十一点半到一点，餐卡在一楼服务台充值。\n",
        "员工食堂的午餐什么时候供应？", "十一点半"),
    Doc("停车场.md", "# 停车场\n\n地下停车场每月的停车费是三百元，车位需要向行政部申请。\n",
        "地下停车场每月停车费多少钱？", "三百元"),
    Doc("快递收发.md", "# 快递收发\n\n个人快递统一放在大堂的智能快递柜，取件码会通过短信发送。\n",
        "个人快递统一放在哪里？", "智能快递柜"),
    Doc("门禁卡.md", "# 门禁卡\n\n门禁卡丢失后要在二十四小时内到保安室挂失，补办费用为五十元。\n",
        "门禁卡丢失后去哪里挂失？", "保安室"),
    Doc("会议室.md", "# 会议室预订\n\n大会议室最多容纳四十人，需要在企业微信的会议室小程序里预订。\n",
        "大会议室最多容纳多少人？", "四十人"),
    Doc("年度体检.md", "# 年度体检\n\n公司每年九月组织全员体检，体检机构是市第一人民医院。\n",
        "年度体检的体检机构是哪家医院？", "第一人民医院"),
    Doc("通勤班车.md", "# 通勤班车\n\n早班车七点十分从地铁站北口发车，晚班车六点整从公司门口发车。\n",
        "早班车几点从地铁站发车？", "七点十分"),
    Doc("设备报修.md", "# 设备报修\n\n办公设备坏了请拨打报修电话 8848，工程师两小时内上门。\n",
        "办公设备坏了拨打什么报修电话？", "8848"),
    Doc("guest_wifi.md", "# Guest Wi-Fi\n\nThe guest Wi-Fi network is called KBQA-Visitor and its password "
        "changes every Monday.\n", "What is the guest Wi-Fi network called?", "KBQA-Visitor"),
    Doc("printer_paper.md", "# Printer paper\n\nSpare printer paper is stored in cabinet B7 next to the "
        "kitchen.\n", "Where is spare printer paper stored?", "cabinet B7"),
]


def write_docs(folder: Path, docs: Sequence[Doc] = DOCS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        (folder / doc.source).write_text(doc.text, encoding="utf-8")
    return folder


# --- a page server (also used by tests/browser/test_exposure.py) -------------------------------------------------------------


@dataclass
class PageServer:
    url: str
    process: subprocess.Popen[bytes]
    knowledge: Path
    log: Path

    def rss_mb(self) -> float:
        """The server process's resident memory (psutil when installed, else /proc/<pid>/status)."""
        try:
            import psutil
        except ImportError:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
            return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
        return float(psutil.Process(self.process.pid).memory_info().rss) / 2**20

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def serve_page(tmp: Path, knowledge: Path, extra: Sequence[str] = (), env: dict[str, str] | None = None,
               bind_loopback: bool = True) -> Iterator[PageServer]:
    """Index ``knowledge`` (hash embedder, extractive backend unless ``extra`` says otherwise), then run
    ``streamlit run app.py`` on a free port until the block ends. ``bind_loopback=False`` passes no address flag,
    so the bind address is whatever ``.streamlit/config.toml`` says. All output goes to ``tmp/streamlit.log``."""
    overrides = [f"knowledge_dir={knowledge}", f"index.dir={tmp / 'indexes' / 'default'}", "embed.source=hash",
                 "llm.backend=extractive", "load.workers=1", f"llm.adapters_dir={tmp / 'adapters'}", *extra]
    sync_folder(knowledge, load_config(None, overrides), HashEmbedder())
    port = free_port()
    full_env = {**os.environ, "KBQA_OVERRIDES": " ".join(shlex.quote(o) for o in overrides),
                "KBQA_FEEDBACK": str(tmp / "feedback.jsonl"), "KBQA_PASSWORD": "", "HF_HUB_OFFLINE": "1",
                "KBQA_OFFLINE": "1", "KBQA_CONVERSATIONS": str(tmp / "conversations"), **(env or {})}
    address = ["--server.address", "127.0.0.1"] if bind_loopback else []
    log_path = tmp / "streamlit.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), *address,
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", process)
            yield PageServer(f"http://127.0.0.1:{port}", process, knowledge, log_path)
        finally:
            stop_process(process)


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """Debian's Chromium through Playwright, with tests/browser/test_browser.py's flags."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium() as chromium:
        yield chromium


def open_pages(browser: Any, url: str, count: int) -> list[Page]:
    """``count`` sessions (one browser context each), loaded together, each showing the chat input."""
    pages = []
    for _ in range(count):
        page = browser.new_context(viewport=DESKTOP, locale="zh-CN").new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url, wait_until="commit")
        pages.append(page)
    for page in pages:
        expect(page.get_by_test_id("stChatInputTextArea")).to_be_visible(timeout=TIMEOUT_MS)
    return pages


# --- load -----------------------------------------------------------------------------------------------------------


def ask_all(pages: Sequence[Page], docs: Sequence[Doc]) -> None:
    for page, doc in zip(pages, docs, strict=True):
        box = page.get_by_test_id("stChatInputTextArea")
        box.fill(doc.question)
        box.press("Enter")


def wait_all(pages: Sequence[Page], turns: int) -> None:
    """Until every page shows ``turns`` finished answers (the feedback buttons come after the stream ends)."""
    for page in pages:
        expect(page.get_by_test_id("stChatMessage")).to_have_count(2 * turns, timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("stChatMessage").last.get_by_test_id("stFeedback")).to_be_visible(
            timeout=TIMEOUT_MS)


def check_no_cross_talk(pages: Sequence[Page], docs: Sequence[Doc], turns: int, extractive: bool) -> None:
    """Each session's chat holds only its own question (``turns`` times) and answers from its own document."""
    for page, doc in zip(pages, docs, strict=True):
        messages = page.get_by_test_id("stChatMessage")
        chat = "\n".join(messages.all_text_contents())  # includes collapsed expanders (the hit list)
        assert chat.count(doc.question) == turns, f"session of {doc.source}: its question not shown {turns}×"
        for other in docs:
            if other is not doc:
                assert other.question not in chat, f"session of {doc.source} shows {other.source}'s question"
        for number in range(turns):
            answer = messages.nth(2 * number + 1)
            if extractive:  # the answer quotes its own document and its first source card names it
                expect(answer).to_contain_text(doc.evidence)
                expect(answer.locator(".kb-src").first).to_contain_text(doc.source)
                shown = answer.inner_text()
                leaked = [other.source for other in docs if other is not doc and other.evidence in shown]
                assert not leaked, f"the answer to {doc.source} quotes {leaked}"
            else:  # a random model's words are noise; the retrieved passages are still this session's
                assert doc.source in (answer.text_content() or ""), f"{doc.source} missing from its answer"


@dataclass
class LoadFigures:
    sessions: int
    answers: int
    round_s: list[float]
    rss_before_mb: float
    rss_warm_mb: float
    rss_after_mb: float

    def line(self) -> str:
        rounds = " ".join(f"{s:.1f}" for s in self.round_s)
        return (f"sessions={self.sessions} answers={self.answers} round wall s=[{rounds}] RSS MB before="
                f"{self.rss_before_mb:.0f} warm={self.rss_warm_mb:.0f} after={self.rss_after_mb:.0f} growth="
                f"{self.rss_after_mb - self.rss_warm_mb:+.1f}")


def run_load(browser: Any, server: PageServer, sessions: int, extractive: bool) -> LoadFigures:
    docs = DOCS[:sessions]
    rss_before = server.rss_mb()
    pages = open_pages(browser, server.url, sessions)
    round_s: list[float] = []
    rss_warm = 0.0
    try:
        for number in range(1 + ROUNDS):
            started = time.monotonic()
            ask_all(pages, docs)
            wait_all(pages, number + 1)
            round_s.append(time.monotonic() - started)
            check_no_cross_talk(pages, docs, number + 1, extractive)
            if number == 0:
                time.sleep(1.0)  # let the page's last reruns finish before the warm reading
                rss_warm = server.rss_mb()
        time.sleep(1.0)
        figures = LoadFigures(sessions, sessions * (1 + ROUNDS), round_s, rss_before, rss_warm, server.rss_mb())
    finally:
        for page in pages:
            page.context.close()
    print(f"\npage load ({'extractive' if extractive else 'tiny hf model'}): {figures.line()}")
    assert max(round_s) < ROUND_LIMIT_S, f"a round took {max(round_s):.1f} s (limit {ROUND_LIMIT_S} s)"
    growth = figures.rss_after_mb - figures.rss_warm_mb
    assert growth < RSS_GROWTH_LIMIT_MB, f"server RSS grew {growth:.1f} MB after the warm-up: {figures.line()}"
    assert "Traceback" not in server.output(), server.output()[-3000:]
    return figures


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageServer]:
    """The extractive page on the ten documents, uploads limited to 1 MB."""
    tmp = tmp_path_factory.mktemp("page-load")
    with serve_page(tmp, write_docs(tmp / "knowledge"), env={"KBQA_MAX_UPLOAD_MB": "1"}) as running:
        yield running


def test_ten_sessions_at_once_extractive(browser: Any, limited_server: PageServer) -> None:
    run_load(browser, limited_server, SESSIONS, extractive=True)


@pytest.mark.slow
def test_ten_sessions_at_once_through_the_generation_queue(browser: Any,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tiny random transformers model answers one session at a time (one generation slot); the rest queue."""
    pytest.importorskip("transformers")
    from tests.tinymodels import build_tiny_causal_lm

    tmp = tmp_path_factory.mktemp("page-load-hf")
    model_dir = build_tiny_causal_lm(tmp, "glm", "chatglm3")
    extra = ("llm.backend=hf", f"llm.model={model_dir}", "llm.source=local", "llm.max_new_tokens=8",
             "answer.context_tokens=300", "answer.history_tokens=60")
    with serve_page(tmp, write_docs(tmp / "knowledge"), extra) as server:
        run_load(browser, server, SESSIONS, extractive=False)


# --- upload limit ---------------------------------------------------------------------------------------------------


def folder_state(folder: Path) -> dict[str, int]:
    """Every entry under ``folder`` (hidden ones too) with its size."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def test_upload_limit_is_enforced(browser: Any, limited_server: PageServer, tmp_path: Path) -> None:
    """KBQA_MAX_UPLOAD_MB=1: a 2 MB file is refused by the uploader; a client that skips the browser's check (the
    upload request rewritten on the way to the server) is refused by the page. Nothing reaches the folder."""
    before = folder_state(limited_server.knowledge)
    page = open_pages(browser, limited_server.url, 1)[0]
    goto_view(page, "知识库")
    expect(page.get_by_text(re.compile(r"1 ?MB per file"))).to_be_visible()  # the uploader states the limit

    big = tmp_path / "大文件.md"
    big.write_bytes(b"# big\n" + b"x" * (2 * 2**20))
    uploader = page.get_by_test_id("stFileUploaderDropzoneInput")
    uploader.set_input_files(str(big))
    expect(page.get_by_text(re.compile(r"File must be 1(\.0)? ?MB or smaller"))).to_be_visible()
    expect(page.get_by_role("button", name="保存并重新索引")).to_be_disabled()

    small = tmp_path / "sneaky.md"
    small.write_text("# small\n\nwithin the limit\n", encoding="utf-8")
    boundary = "kbqa-oversized-body"

    def swap_body(route: Route) -> None:  # what a client skipping the browser's size check sends instead
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{small.name}"\r\n'
                "Content-Type: text/markdown\r\n\r\n")
        body = head.encode() + b"y" * (2 * 2**20) + f"\r\n--{boundary}--\r\n".encode()
        headers = {**route.request.headers, "content-type": f"multipart/form-data; boundary={boundary}"}
        route.continue_(post_data=body, headers=headers)

    page.route("**/_stcore/upload_file/**", swap_body)
    chip = page.get_by_role("button", name=f"Remove {small.name}")
    set_file_until_listed(uploader, small, chip)  # set again when the rerun after the refused one drops it
    save = page.get_by_role("button", name="保存并重新索引")
    expect(save).to_be_enabled(timeout=TIMEOUT_MS)  # the server holds the (swapped) upload
    save.click()
    expect(page.get_by_text(f"{small.name} 超过 1 MB 的上传上限，未保存。")).to_be_visible()
    assert folder_state(limited_server.knowledge) == before, "an over-limit upload changed the knowledge folder"
    print("\nupload limit: 2 MB file refused by the uploader; 2 MB body behind a small file refused by the page; "
          f"knowledge folder unchanged ({len(before)} files)")
    page.context.close()
