"""What the page renders from untrusted text (issue 17 items 3, 4 and 11), in Debian's Chromium like
``test_browser.py``: a model answer with a markdown image and raw HTML fetches nothing and shows the URL as text; the
page sets a Content-Security-Policy for images; a passage's apostrophe shows as ``'`` (not ``&#x27;``); a file name
with markdown shows as itself in the "Deleted ..." message; a 90-character Chinese upload name is saved, shortened to
255 bytes, with no traceback, and the rest of the batch is saved too.

The model is a fake OpenAI-compatible server on loopback (this file's ``FakeLLM``) that always answers with an
image pointing back at itself, so any fetch of it is counted.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.browser.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    Server,
    ask,
    goto_view,
    last_answer,
    open_page,
    run_server,
)

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # test_browser.py skips the module first; this keeps mypy and the import honest
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = pytest.mark.integration


class FakeLLM:
    """An OpenAI-compatible chat server whose answer carries a markdown image and an <img> aimed at ``/leak``."""

    def __init__(self) -> None:
        self.leaks: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/leak"):
                    owner.leaks.append(self.path)
                    self.send_response(200)
                    self.send_header("content-type", "image/gif")
                    self.end_headers()
                    self.wfile.write(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
                elif self.path.startswith("/v1/models"):
                    self._json({"object": "list", "data": [{"id": "fake", "owned_by": "vllm"}]})
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                request = self.rfile.read(int(self.headers.get("content-length", 0))).decode("utf-8", "replace")
                if "出错" in request:  # an error whose message carries an image too
                    raw = json.dumps({"error": {"message": "bad request ![e](http://127.0.0.1:"
                                                           f"{owner.port}/leak-error)"}}).encode()
                    self.send_response(400)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                answer = (f"员工每年有五天年假 [1]。![pic](http://127.0.0.1:{owner.port}/leak?q=question) "
                          f'<img src="http://127.0.0.1:{owner.port}/leak2">')
                pieces = [answer[i:i + 7] for i in range(0, len(answer), 7)]  # split inside the markup on purpose
                events = [{"id": "c", "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": {"content": piece}}]} for piece in pieces]
                body = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events) + "data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            def _json(self, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


MARKDOWN_NAME = "![pic](leak3.png).md"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLM) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("rendering")
    knowledge = tmp / "knowledge"
    knowledge.mkdir()
    (knowledge / "年假.md").write_text("# 年假\n\n员工每年有五天年假，it's paid leave for everyone.\n", encoding="utf-8")
    (knowledge / MARKDOWN_NAME).write_text("# 图\n\n打印机在三楼。\n", encoding="utf-8")
    extra = ("llm.backend=openai", f"llm.openai_base_url=http://127.0.0.1:{llm.port}/v1", "llm.model=fake")
    with run_server(tmp, knowledge, extra) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM.is_file()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def test_answer_images_and_html_are_not_rendered(browser: Any, server: Server, llm: FakeLLM) -> None:
    page = open_page(browser, server, DESKTOP)
    policy = page.locator('head meta[http-equiv="Content-Security-Policy"]')
    expect(policy).to_have_count(1)
    assert "img-src 'self' data: blob:" in (policy.get_attribute("content") or "")
    ask(page, "年假几天？")
    answer = last_answer(page)
    expect(answer.get_by_test_id("stFeedback")).to_be_visible()
    expect(answer).to_contain_text(f"![pic](http://127.0.0.1:{llm.port}/leak?q=question)")  # the URL, as text
    expect(answer).to_contain_text('<img src="')
    assert answer.locator("img").count() == 0
    card = answer.locator(".kb-src").first
    expect(card).to_contain_text("it's paid leave")  # item 11: one escape, not "it&#x27;s"
    assert "&#" not in card.inner_text()
    ask(page, "出错了吗？")  # the server's error message is shown as text too
    expect(page.get_by_test_id("stAlert").filter(has_text="bad request")).to_contain_text(
        f"![e](http://127.0.0.1:{llm.port}/leak-error)")
    page.wait_for_timeout(500)
    assert llm.leaks == []
    page.context.close()


def test_markdown_in_a_file_name_is_shown_as_text(browser: Any, server: Server) -> None:
    page = open_page(browser, server, DESKTOP)
    page.set_viewport_size({"width": 1280, "height": 1400})
    goto_view(page, "知识库")
    expander = page.get_by_test_id("stExpander").filter(has_text="删除文档")
    choose = expander.get_by_test_id("stSelectbox")
    for attempt in range(4):  # a rerun that lands after the click redraws the expander closed: open it again
        if not choose.is_visible():
            expander.locator("summary").click()
        try:
            expect(choose).to_be_visible(timeout=5_000)
            choose.click(timeout=5_000)
            page.get_by_role("option", name=MARKDOWN_NAME).click(timeout=5_000)  # the list closes on a rerun too
            break
        except (AssertionError, PlaywrightTimeout):
            if attempt == 3:
                raise
    page.get_by_text("确认删除此文件").click()
    page.get_by_role("button", name="删除并重新索引").click()
    alert = page.get_by_test_id("stAlert").filter(has_text="已删除")
    expect(alert).to_contain_text(f"已删除 {MARKDOWN_NAME}")
    assert alert.locator("img").count() == 0
    assert not (server.knowledge / MARKDOWN_NAME).exists()
    page.context.close()


def test_a_long_chinese_upload_name_is_saved_shortened(browser: Any, server: Server) -> None:
    page = open_page(browser, server, DESKTOP)
    page.set_viewport_size({"width": 1280, "height": 1400})
    goto_view(page, "知识库")
    long_name = "关于" * 45 + ".md"  # 90 characters, 273 bytes
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files([
        {"name": long_name, "mimeType": "text/markdown", "buffer": "# 长名\n\n报销在十个工作日内完成。\n".encode()},
        {"name": "短名.md", "mimeType": "text/markdown", "buffer": "# 短名\n\n会议室在二楼。\n".encode()},
    ])
    expect(page.get_by_text("短名.md").first).to_be_visible()
    page.get_by_role("button", name="保存并重新索引").click()
    expect(page.get_by_text("索引报告")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("已保存 短名.md")).to_be_visible()
    expect(page.get_by_text("已保存 关于关于").first).to_be_visible()
    assert page.get_by_test_id("stException").count() == 0
    saved = sorted(path.name for path in server.knowledge.iterdir() if path.name.startswith("关于"))
    assert len(saved) == 1 and saved[0].endswith(".md") and len(saved[0].encode()) <= 255
    assert (server.knowledge / "短名.md").is_file()
    page.context.close()


def test_fake_llm_is_reachable(llm: FakeLLM) -> None:
    """The fake answers like an OpenAI server (so a pass above is not a page that never asked it)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{llm.port}/v1/models", timeout=5) as reply:
        assert json.loads(reply.read())["data"][0]["id"] == "fake"
