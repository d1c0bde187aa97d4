"""The model panel in a real browser (Debian's Chromium through Playwright, as ``test_browser.py``): connect to an
OpenAI-compatible endpoint (a small loopback server started here, tests/fake_openai.py, which wants an API key),
test the connection, save it, get the chat's answer from it, and find the choice still there after a reload. The API
key must reach the server but never the page after saving, nor the server log. A download started from the page runs
``python -m rag.models download`` in the background against a Hugging Face-compatible hub on loopback
(tests/fake_hub.py, ``HF_ENDPOINT``): the progress bar moves, cancel stops it, starting again finishes it.
Screenshots at desktop and phone width (``KBQA_SCREENSHOTS=docs/screenshots`` refreshes the committed ones).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.core.config import REPO_ROOT
from tests.browser.test_browser import (
    DESKTOP,
    PHONE,
    Server,
    ask,
    goto_view,
    last_answer,
    open_page,
    run_server,
    shot,
    wait_answer,
)
from tests.browser.test_page_load import headless_chromium
from tests.fake_hub import FakeHub
from tests.fake_openai import FakeOpenAI

try:
    from playwright.sync_api import Page, expect
except ImportError:  # test_browser.py skips the module first; this keeps mypy and the import honest
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = pytest.mark.integration

KEY = "sk-panel-test-0123456789"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(models=("qwen-mini", "law-qa"), api_key=KEY)
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    """A model in two shards: 1 MiB (done at once) and 24 MiB sent in 1 MiB pieces (~4 s; the client writes 10 MiB
    at a time, so the bar moves in visible steps)."""
    files = {"config.json": b'{"model_type": "llama"}', "model-00001.safetensors": os.urandom(2**20),
             "model-00002.safetensors": os.urandom(24 * 2**20)}
    fake = FakeHub("org/tiny-llm", files, piece_bytes=2**20, pause_s=0.2)
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("model-panel")
    knowledge = shutil.copytree(REPO_ROOT / "knowledge", tmp / "knowledge")
    online = {"HF_HUB_OFFLINE": None, "KBQA_OFFLINE": None, "KBQA_CACHE": None, "HF_ENDPOINT": hub.url,
              "HF_HOME": str(tmp / "hf-home"), "HF_HUB_DISABLE_XET": "1"}  # downloads reach the loopback hub only
    with run_server(tmp, knowledge, (f"llm.cache_dir={tmp / 'models'}",), online) as running:
        yield running, tmp


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium() as chromium:
        yield chromium


def main_area(page: Page) -> Any:
    return page.get_by_test_id("stMainBlockContainer")


def test_connect_an_endpoint_answer_from_it_and_keep_it_after_a_reload(browser: Any, endpoint: FakeOpenAI,
                                                                       page_server: tuple[Server, Path]) -> None:
    server, tmp = page_server
    started = time.perf_counter()
    page = open_page(browser, server, DESKTOP)
    print(f"page load (extractive, first session): {time.perf_counter() - started:.2f} s")
    expect(page.get_by_test_id("stChatMessage")).to_have_count(0)
    page.set_viewport_size({"width": 1280, "height": 1500})
    goto_view(page, "模型")
    main = main_area(page)
    main.get_by_test_id("stRadioOption").filter(has_text="OpenAI 兼容服务").click()
    main.get_by_role("textbox", name="服务地址（URL）").fill(f"http://127.0.0.1:{endpoint.port}")
    main.get_by_role("textbox", name="API 密钥（可选）").fill(KEY)
    main.get_by_role("button", name="测试连接").click()
    expect(main.get_by_text("连接成功")).to_be_visible()
    expect(main.get_by_text("qwen-mini, law-qa")).to_be_visible()  # the server's list, as GET /v1/models gave it
    expect(main.get_by_role("textbox", name="模型名称")).to_have_value("qwen-mini")  # filled from the list
    assert [(s.method, s.path) for s in endpoint.seen[:2]] == [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]
    shot(page, "model_connect.png")

    main.get_by_role("button", name="保存并使用").click()
    expect(main.get_by_text("已保存并切换到")).to_be_visible()
    expect(main).to_contain_text("后端: openai")
    expect(main.get_by_role("textbox", name="API 密钥（可选）")).to_have_value("")  # the key left the page
    expect(main.get_by_text("已保存一个密钥（不再显示）")).to_be_visible()
    assert KEY not in page.content()
    saved = tmp / "conversations" / "model.yaml"
    assert "kind: openai" in saved.read_text(encoding="utf-8") and saved.stat().st_mode & 0o077 == 0
    shot(page, "model_saved.png")

    page.set_viewport_size(DESKTOP)
    goto_view(page, "对话")
    asked = time.perf_counter()
    ask(page, "连不上无线网络怎么办？")
    expect(last_answer(page)).to_contain_text("以上由", timeout=30_000)
    first_text = time.perf_counter() - asked
    answer = wait_answer(page, "以上由 qwen-mini 回答")
    print(f"first answer text from the endpoint: {first_text:.2f} s after Enter; "
          f"whole answer with sources: {time.perf_counter() - asked:.2f} s")
    expect(answer.locator(".kb-src").first).to_contain_text("网络故障排查.pdf")
    chat = endpoint.chats()[-1]
    assert chat.authorization == f"Bearer {KEY}" and chat.body["model"] == "qwen-mini"
    shot(page, "model_answer.png")

    reloaded = time.perf_counter()
    page.reload()  # F5: the conversation and the chosen model are both still there
    wait_answer(page, "以上由 qwen-mini 回答")
    print(f"reload restored the conversation in {time.perf_counter() - reloaded:.2f} s")
    expect(page.get_by_test_id("stSidebar")).to_contain_text("qwen-mini · openai")
    goto_view(page, "模型")
    expect(main_area(page)).to_contain_text("后端: openai")
    expect(main_area(page).get_by_test_id("stRadioOption").filter(has_text="OpenAI 兼容服务").locator("input")
           ).to_be_checked()
    expect(main_area(page).get_by_role("textbox", name="服务地址（URL）")).to_have_value(endpoint.url)
    page.get_by_test_id("stSidebar").get_by_text("English", exact=True).click()  # the panel stays as it was
    expect(main_area(page).get_by_test_id("stRadioOption").filter(has_text="OpenAI-compatible endpoint")
           .locator("input")).to_be_checked()
    expect(main_area(page)).to_contain_text("Backend: openai")
    shot(page, "model_saved_en.png")
    page.get_by_test_id("stSidebar").get_by_text("中文", exact=True).click()
    expect(main_area(page).get_by_test_id("stRadioOption").filter(has_text="OpenAI 兼容服务").locator("input")
           ).to_be_checked()
    page.context.close()

    phone = open_page(browser, server, PHONE)
    goto_view(phone, "模型")
    expect(main_area(phone)).to_contain_text("后端: openai")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the model page scrolls sideways at phone width ({width} px)"
    shot(phone, "model_phone.png")
    phone.context.close()
    assert KEY not in (tmp / "streamlit.log").read_text(errors="replace")


def test_a_download_shows_its_progress_can_be_cancelled_and_finishes(browser: Any, hub: FakeHub,
                                                                      page_server: tuple[Server, Path]) -> None:
    from rag.webui.downloads import modelscope_installed

    server, tmp = page_server
    page = open_page(browser, server, DESKTOP)
    page.set_viewport_size({"width": 1280, "height": 1500})
    goto_view(page, "模型")
    main = main_area(page)
    main.get_by_test_id("stRadioOption").filter(has_text="下载模型").click()
    expect(main.get_by_role("textbox", name="模型 ID 或简称")).to_have_value("chatglm3-6b")
    if not modelscope_installed():  # not a dead end: Automatic goes to Hugging Face, and the page says so
        expect(main.get_by_text("本机未安装 modelscope")).to_be_visible()
    main.get_by_role("textbox", name="模型 ID 或简称").fill("org/tiny-llm")
    main.get_by_role("textbox", name="模型 ID 或简称").press("Enter")
    main.get_by_test_id("stSelectbox").filter(has_text="下载来源").click()
    page.get_by_role("option", name="Hugging Face", exact=True).click()
    main.get_by_role("button", name="开始下载").click()
    bar = main.get_by_test_id("stProgress")
    expect(bar).to_contain_text("正在后台下载 org/tiny-llm", timeout=30_000)
    expect(bar).to_contain_text("/ 约 26.2 MB", timeout=30_000)  # the hub's file list: 1 + 24 MiB + config
    expect(bar).to_contain_text(re.compile(r"已下载 1\d\.\d MB"), timeout=30_000)  # the first 10 MiB written
    shot(page, "model_download.png")
    main.get_by_role("button", name="取消下载").click()
    expect(main.get_by_text("已取消下载")).to_be_visible()
    expect(main.get_by_role("button", name="开始下载")).to_be_enabled()

    main.get_by_role("button", name="开始下载").click()  # again: the finished shard is kept
    expect(main.get_by_text("下载完成")).to_be_visible(timeout=60_000)
    expect(main.get_by_role("button", name="使用下载的模型")).to_be_visible()
    assert (tmp / "models" / "org--tiny-llm" / "model-00002.safetensors").stat().st_size == 24 * 2**20
    assert [name for name, _ in hub.gets].count("model-00001.safetensors") == 1
    shot(page, "model_downloaded.png")
    page.context.close()
