"""The chat page in a real browser: ``streamlit run app.py`` on a free loopback port, driven by Debian's headless
Chromium through Playwright (never ``playwright install``). The sample knowledge base is copied and indexed at test
time on the hash embedder; answers come from the extractive backend.

Screenshots go to a temp folder (``KBQA_SCREENSHOTS=docs/screenshots`` refreshes the committed ones): chat at desktop (1280×900) and phone
(390×844) width, the sources, a refusal, the upload report, the model page, and compare mode on a tiny random
transformers model with a LoRA adapter (its words are noise; the layout is the point). Needs ``/usr/bin/chromium`` and a CJK font
(``make browser-deps`` installs both on Debian), and ``pip install -r requirements-dev.txt`` for Playwright.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rag.core.config import REPO_ROOT, load_config
from rag.embed.embedder import HashEmbedder
from rag.index.sync import sync_folder
from tests.conftest import write_corpus

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Tests write screenshots to a temp folder; `KBQA_SCREENSHOTS=docs/screenshots make test` refreshes the committed ones.
SHOTS = Path(os.environ.get("KBQA_SCREENSHOTS", tempfile.gettempdir() + "/kbqa-screenshots"))
TIMEOUT_MS = 20_000

try:
    from playwright.sync_api import Locator, Page, expect, sync_playwright
except ImportError:
    pytest.skip("playwright is not installed: pip install -r requirements-dev.txt (playwright==1.65.2)",
                allow_module_level=True)
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing: run `make browser-deps` (apt-get install -y chromium fonts-wqy-microhei)",
                allow_module_level=True)
# every expect() without its own timeout waits up to 15 s, not Playwright's 5 s: a 2-core CI machine running a
# Streamlit server, Chromium and the tests at once sometimes needs more than 5 s for a rerun
expect.set_options(timeout=15_000)


@dataclass
class Server:
    url: str
    knowledge: Path
    feedback: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server process, killing it if it does not exit within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"streamlit did not answer on {url} within {timeout_s} s")


@contextmanager
def run_server(tmp: Path, knowledge: Path, extra: tuple[str, ...] = (),
               environ: dict[str, str | None] | None = None) -> Iterator[Server]:
    """Index ``knowledge`` (hash embedder), then serve app.py on a free loopback port until the block ends.
    ``environ`` sets (or, with None, removes) the server's environment variables over the defaults (offline)."""
    overrides = [f"knowledge_dir={knowledge}", f"index.dir={tmp / 'indexes' / 'default'}", "embed.source=hash",
                 "llm.backend=extractive", "load.workers=2", f"llm.adapters_dir={tmp / 'adapters'}", *extra]
    sync_folder(knowledge, load_config(None, overrides), HashEmbedder())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "KBQA_OVERRIDES": " ".join(shlex.quote(o) for o in overrides),
           "KBQA_FEEDBACK": str(tmp / "feedback.jsonl"), "KBQA_PASSWORD": "", "HF_HUB_OFFLINE": "1",
           "KBQA_CONVERSATIONS": str(tmp / "conversations"),
           "KBQA_OFFLINE": "1"}
    for name, value in (environ or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    log_path = tmp / "streamlit.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
             "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(url, process)
            yield Server(url, knowledge, tmp / "feedback.jsonl")
        finally:
            stop_process(process)
    if process.returncode not in (0, -15):
        print(log_path.read_text(errors="replace")[-3000:])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("browser")
    with run_server(tmp, shutil.copytree(REPO_ROOT / "knowledge", tmp / "knowledge")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def open_page(browser: Any, server: Server, viewport: dict[str, int], load_timeout_ms: int = TIMEOUT_MS) -> Page:
    context = browser.new_context(viewport=viewport, locale="zh-CN", device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url)
    expect(page.get_by_test_id("stChatInputTextArea")).to_be_visible(timeout=load_timeout_ms)
    return page


def ask(page: Page, question: str) -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    box.press("Enter")


def last_answer(page: Page) -> Locator:
    return page.get_by_test_id("stChatMessage").last


def wait_answer(page: Page, expected: str) -> Locator:
    """The last chat message once it shows ``expected`` and its feedback buttons (drawn after the stream ends)."""
    message = last_answer(page)
    expect(message).to_contain_text(expected)
    expect(message.get_by_test_id("stFeedback")).to_be_visible()
    return message


def has_cjk_font() -> bool:
    try:
        fonts = subprocess.run(["fc-list"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(re.search(r"wenquanyi|noto (sans|serif) cjk|droid sans fallback", fonts, re.IGNORECASE))


CJK_FONT = has_cjk_font()


def shot(target: Page | Locator, name: str) -> None:
    """Save a screenshot of a page (its viewport) or an element, unless no CJK font is installed (Chinese would
    show as boxes: make browser-deps)."""
    if not CJK_FONT:
        print(f"not saving {name}: no CJK font installed (apt-get install -y fonts-wqy-microhei)")
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = target if isinstance(target, Page) else target.page
    page.wait_for_timeout(300)  # let the last layout pass settle
    target.screenshot(path=str(SHOTS / name))


def goto_view(page: Page, label: str) -> None:
    """Click one of the page switches (对话 / 知识库 / 模型) above the content."""
    page.get_by_test_id("stMainBlockContainer").get_by_test_id("stRadioOption").filter(has_text=label).click()



def set_file_until_listed(uploader: Any, path: Path, chip: Any, tries: int = 3) -> None:
    """Give ``uploader`` the file until its chip shows: a file set while the page still reruns (after a creation, a
    refused file) is sometimes dropped by Streamlit, so it is set again."""
    for attempt in range(tries):
        uploader.set_input_files(str(path))
        try:
            expect(chip).to_be_visible(timeout=TIMEOUT_MS // 3)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise

def test_chat_sources_upload_and_model_pages(browser: Any, server: Server) -> None:
    page = open_page(browser, server, DESKTOP)
    expect(page.get_by_text("本地知识库问答")).to_be_visible()
    ask(page, "连不上无线网络怎么办？")
    answer = wait_answer(page, "XingHe-Corp")
    expect(answer.get_by_text("来源", exact=True)).to_be_visible()
    card = answer.locator(".kb-src").first
    expect(card).to_contain_text("网络故障排查.pdf · 第")  # file name and page
    expect(answer.locator(".kb-src mark").first).to_be_visible()  # the supporting sentence is highlighted
    link = answer.locator('a[href^="#src-"]').first
    expect(link).to_be_visible()
    shot(page, "chat_desktop.png")
    shot(answer, "sources.png")

    target = link.get_attribute("href")
    link.click()  # a citation jumps to its source card
    assert target
    page.wait_for_function("hash => location.hash === hash", arg=target)
    expect(page.locator(f"div{target}")).to_be_in_viewport()

    ask(page, "火星有几颗卫星？")
    refusal = wait_answer(page, "无法回答")
    expect(refusal).to_contain_text("最接近的段落")
    expect(refusal.locator(".kb-src").first).to_be_visible()
    shot(refusal, "refusal.png")

    page.set_viewport_size({"width": 1280, "height": 1400})  # the panels below are taller than the chat
    goto_view(page, "模型")
    expect(page.get_by_text("如何安装 ChatGLM3-6B")).to_be_visible()
    expect(page.get_by_test_id("stCode")).to_contain_text("python -m rag.models download chatglm3-6b")
    shot(page, "model.png")

    goto_view(page, "知识库")
    doc = server.knowledge.parent / "出差报销.md"
    doc.write_text("# 出差报销\n\n出差结束后十个工作日内提交报销单，住宿标准为每晚五百元。\n", encoding="utf-8")
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(doc))
    expect(page.get_by_text("出差报销.md").first).to_be_visible()
    page.get_by_role("button", name="保存并重新索引").click()
    expect(page.get_by_text("索引报告")).to_be_visible()
    expect(page.get_by_text("已保存 出差报销.md")).to_be_visible()
    assert (server.knowledge / "出差报销.md").is_file()
    shot(page, "upload.png")

    page.set_viewport_size(DESKTOP)
    goto_view(page, "对话")
    ask(page, "出差住宿标准是多少？")
    expect(wait_answer(page, "五百元").locator(".kb-src").first).to_contain_text("出差报销.md")
    page.context.close()


def test_phone_width(browser: Any, server: Server) -> None:
    page = open_page(browser, server, PHONE)
    ask(page, "VPN 连不上怎么办？")
    wait_answer(page, "VPN")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways at phone width ({width} px)"
    shot(page, "chat_phone.png")
    page.context.close()


def test_two_sessions_ask_at_once(browser: Any, server: Server) -> None:
    first, second = open_page(browser, server, DESKTOP), open_page(browser, server, DESKTOP)
    ask(first, "域账号密码多久需要修改一次？")
    ask(second, "How do I reset the device to factory settings?")
    one = wait_answer(first, "90 天")
    two = wait_answer(second, "factory reset")
    expect(one).not_to_contain_text("factory reset")
    expect(two).not_to_contain_text("90 天")
    assert first.get_by_test_id("stChatMessage").count() == 2  # each session sees its own history only
    assert second.get_by_test_id("stChatMessage").count() == 2
    expect(two.locator(".kb-src").first).to_contain_text("product_manual_en.pdf")
    for page in (first, second):
        page.context.close()


def test_compare_mode_and_a_queued_second_session_on_a_tiny_model(browser: Any,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """Base model vs adapter side by side, while a second session asks too and waits its turn. The model is tiny and
    random (built here), so its words are noise: the test checks the layout, that both sessions get complete,
    separate answers, and (when the timing lets it be seen) the place-in-line notice."""
    pytest.importorskip("peft")
    from tests.integration.test_app import build_tiny_llm, tiny_llm_overrides

    tmp = tmp_path_factory.mktemp("compare")
    model_dir, adapters = build_tiny_llm(tmp)
    extra = (*tiny_llm_overrides(model_dir, adapters), "llm.max_new_tokens=48")
    with run_server(tmp, write_corpus(tmp / "kb"), extra) as server:
        page = open_page(browser, server, DESKTOP, load_timeout_ms=60_000)  # the first run loads torch
        other = open_page(browser, server, DESKTOP)
        adapter = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text="LoRA 适配器")
        adapter.scroll_into_view_if_needed()  # below the conversation list: scrolled first, a click opens the menu
        adapter.click()
        page.get_by_role("option", name="demo").click()
        page.get_by_test_id("stSidebar").get_by_text("对比模式").click()
        ask(page, "年假需要提前几天申请？")
        ask(other, "打印机驱动怎么安装？")
        waiting = other.get_by_test_id("stChatMessage").last
        queued = False
        while not waiting.get_by_test_id("stFeedback").is_visible():
            if not queued and "正在排队" in waiting.inner_text():
                queued = True
                shot(other, "queue.png")
            other.wait_for_timeout(50)
        print(f"second session saw its place in line: {queued}")

        answer = last_answer(page)
        expect(answer.get_by_test_id("stFeedback")).to_be_visible(timeout=60_000)
        expect(answer.get_by_text("基础模型", exact=True)).to_be_visible()
        expect(answer.get_by_text("适配器：demo", exact=True)).to_be_visible()
        expect(answer.get_by_test_id("stColumn")).to_have_count(2)
        expect(answer).to_contain_text("+ demo")  # "answered by": the base model | the base model + demo
        shot(page, "compare.png")
        expect(page.get_by_test_id("stChatMessage")).to_have_count(2)  # each session: its own question only
        expect(other.get_by_test_id("stChatMessage")).to_have_count(2)
        expect(page.get_by_test_id("stChatMessage").first).to_contain_text("年假")
        expect(other.get_by_test_id("stChatMessage").first).to_contain_text("打印机")
        expect(other.get_by_test_id("stChatMessage").last.get_by_test_id("stColumn")).to_have_count(0)
        for opened in (page, other):
            opened.context.close()


def sidebar_conversations(page: Page) -> Locator:
    """The conversation buttons of the sidebar's list (the open one is the primary button)."""
    return page.get_by_test_id("stSidebar").locator('[class*="st-key-conv-"] button')


def test_reload_and_restart_keep_the_conversation_and_the_list_actions(browser: Any, server: Server) -> None:
    page = open_page(browser, server, DESKTOP)
    expect(page.get_by_test_id("stSidebar")).to_contain_text("还没有保存的对话")
    ask(page, "连不上无线网络怎么办？")
    wait_answer(page, "XingHe-Corp")
    expect(sidebar_conversations(page)).to_have_count(1)
    page.wait_for_function("() => new URLSearchParams(location.search).has('c')")
    assert re.search(r"[?&]u=[\w-]{16,}", page.url), page.url

    started = time.perf_counter()
    page.reload()  # F5: the same conversation, its sources and the list come back
    restored = wait_answer(page, "XingHe-Corp")
    print(f"reload restored the conversation in {time.perf_counter() - started:.2f} s")
    expect(page.get_by_test_id("stChatMessage")).to_have_count(2)
    expect(restored.locator(".kb-src").first).to_contain_text("网络故障排查.pdf")
    expect(sidebar_conversations(page)).to_have_count(1)

    page.get_by_test_id("stSidebar").get_by_role("button", name="新对话").click()
    expect(page.get_by_test_id("stChatMessage")).to_have_count(0)
    ask(page, "域账号密码多久需要修改一次？")
    wait_answer(page, "90 天")
    expect(sidebar_conversations(page)).to_have_count(2)
    expect(sidebar_conversations(page).first).to_contain_text("域账号密码")  # newest first
    shot(page, "conversations.png")

    sidebar_conversations(page).nth(1).click()  # reopen the first conversation
    expect(page.get_by_test_id("stChatMessage").first).to_contain_text("连不上无线网络")
    expect(page.get_by_test_id("stChatMessage")).to_have_count(2)
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("当前对话：重命名").click()
    title = sidebar.get_by_label("标题")
    expect(title).to_have_count(1)  # a rerun can show the old expander's field beside the new one for a moment
    title.fill("无线网络排障")
    title.press("Enter")
    sidebar.get_by_role("button", name="重命名").click()
    expect(sidebar_conversations(page).filter(has_text="无线网络排障")).to_have_count(1)
    with page.expect_download() as markdown:
        sidebar.get_by_role("button", name="Markdown").click()
    text = Path(markdown.value.path()).read_text(encoding="utf-8")
    assert text.startswith("# 无线网络排障\n") and "## 连不上无线网络怎么办？" in text and "网络故障排查.pdf" in text
    assert markdown.value.suggested_filename == "无线网络排障.md"
    with page.expect_download() as exported:
        sidebar.get_by_role("button", name="JSON").click()
    data = json.loads(Path(exported.value.path()).read_text(encoding="utf-8"))
    assert data["title"] == "无线网络排障" and data["turns"][0]["question"] == "连不上无线网络怎么办？"
    shot(page, "conversation_actions.png")

    # a new tab of the same browser (the cookie, no ?u=) lists the same conversations; another browser none
    same_browser = page.context.new_page()
    same_browser.goto(server.url)
    expect(sidebar_conversations(same_browser)).to_have_count(2)
    same_browser.close()
    other = open_page(browser, server, DESKTOP)
    expect(other.get_by_test_id("stSidebar")).to_contain_text("还没有保存的对话")
    other.context.close()

    sidebar.get_by_role("button", name="删除此对话").click()
    expect(sidebar_conversations(page)).to_have_count(1)
    expect(page.get_by_test_id("stChatMessage")).to_have_count(0)
    expect(sidebar_conversations(page).first).to_contain_text("域账号密码")
    page.context.close()


HIDDEN_MARKS_JS = """() => [...document.querySelectorAll('.kb-src-body')].filter((body) => body.querySelector('mark'))
    .map((body) => {
      const box = body.getBoundingClientRect(), mark = body.querySelector('mark').getBoundingClientRect();
      // the sentence starts in the upper three quarters of its scroll box, where a reader sees it at once
      return {visible: mark.top >= box.top - 1 && mark.top <= box.top + box.height * 0.75,
              text: body.innerText.slice(0, 40)};
    })"""
AFTER_JS = "(element) => getComputedStyle(element, '::after').content"


def test_marks_in_view_feedback_file_uploader_words_and_language_switch_keeps_the_view(browser: Any,
                                                                                         server: Server) -> None:
    page = open_page(browser, server, DESKTOP)
    ask(page, "连不上无线网络怎么办？")
    answer = wait_answer(page, "XingHe-Corp")
    expect(answer.locator(".kb-src mark").first).to_be_attached()
    page.wait_for_timeout(500)  # the page script scrolls each card once it is drawn
    cards = page.evaluate(HIDDEN_MARKS_JS)
    assert cards and all(card["visible"] for card in cards), cards  # the highlighted sentence shows without scrolling
    shot(answer, "sources_marks_in_view.png")

    answer.get_by_test_id("stFeedback").get_by_label("Thumbs up").click()
    expect(answer).to_contain_text(f"反馈保存在 {server.feedback.resolve()}")
    line = server.feedback.read_text(encoding="utf-8").splitlines()[-1]
    assert "连不上无线网络" in line and "\\u" not in line  # readable UTF-8, not \uXXXX escapes

    goto_view(page, "知识库")
    dropzone = page.get_by_test_id("stFileUploaderDropzone")
    expect(dropzone).to_be_visible()
    assert "选择文件" in dropzone.locator("button p").evaluate(AFTER_JS)
    limit = page.get_by_test_id("stFileUploaderDropzoneInstructions").locator("span").first.evaluate(AFTER_JS)
    assert "单个文件不超过 50 MB" in limit and "PDF" in limit
    shot(page.get_by_test_id("stFileUploader"), "uploader_zh.png")

    page.get_by_test_id("stSidebar").get_by_text("English", exact=True).click()  # the view stays 知识库 -> Knowledge base
    options = page.get_by_test_id("stMainBlockContainer").get_by_test_id("stRadioOption")
    expect(options.filter(has_text="Knowledge base").locator("input")).to_be_checked()
    expect(options.filter(has_text="Chat").locator("input")).not_to_be_checked()
    expect(page.get_by_test_id("stFileUploaderDropzone").locator("button")).to_contain_text("Upload")
    assert "选择文件" not in page.get_by_test_id("stFileUploaderDropzone").locator("button p").evaluate(AFTER_JS)
    page.get_by_test_id("stSidebar").get_by_text("中文", exact=True).click()
    expect(options.filter(has_text="知识库").locator("input")).to_be_checked()
    page.context.close()


def sidebar_index(page: Page) -> Locator:
    """The sidebar's knowledge base choice (its input shows the chosen one)."""
    return page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text="索引").locator("input")


def test_a_knowledge_base_made_from_the_page_is_asked_renamed_and_deleted(browser: Any, server: Server) -> None:
    page = open_page(browser, server, DESKTOP)
    page.set_viewport_size({"width": 1280, "height": 1400})
    goto_view(page, "知识库")
    main = page.get_by_test_id("stMainBlockContainer")
    expect(page.get_by_test_id("stFileUploaderDropzone")).to_be_visible()
    expect(main.get_by_role("textbox", name="知识库名称")).to_be_visible()
    main.get_by_role("textbox", name="知识库名称").fill("人事制度")
    main.get_by_role("textbox", name="文档文件夹（可选）").fill("../outside")
    main.get_by_role("button", name="新建知识库").click()
    expect(main.get_by_text("is not inside")).to_be_visible()  # a folder outside the allowed root is refused
    expect(main.get_by_role("textbox", name="知识库名称")).to_have_value("人事制度")  # the form keeps what was typed
    main.get_by_role("textbox", name="文档文件夹（可选）").fill("hr-docs")
    main.get_by_role("button", name="新建知识库").click()
    expect(main.get_by_text("已新建知识库“人事制度”")).to_be_visible()
    expect(sidebar_index(page)).to_have_value("人事制度")
    folder = server.knowledge.parent / "hr-docs"
    assert folder.is_dir() and (server.knowledge.parent / "indexes" / "人事制度" / "knowledge_base.json").is_file()

    doc = server.knowledge.parent / "婚假.md"
    doc.write_text("# 婚假\n\n员工结婚可享受婚假十五天，需提供结婚证复印件。\n", encoding="utf-8")
    chip = page.get_by_role("button", name="Remove 婚假.md")
    set_file_until_listed(page.get_by_test_id("stFileUploaderDropzoneInput"), doc, chip)
    expect(page.get_by_role("button", name="保存并重新索引")).to_be_enabled()
    page.get_by_role("button", name="保存并重新索引").click()
    expect(page.get_by_text("已保存 婚假.md")).to_be_visible()
    assert (folder / "婚假.md").is_file() and not (server.knowledge / "婚假.md").exists()
    shot(page, "knowledge_bases.png")

    goto_view(page, "对话")
    ask(page, "婚假有几天？")
    expect(wait_answer(page, "十五天").locator(".kb-src").first).to_contain_text("婚假.md")

    goto_view(page, "知识库")
    expect(page.get_by_test_id("stFileUploaderDropzone")).to_be_visible()
    expect(main.get_by_role("textbox", name="知识库名称").last).to_be_visible()
    title = main.get_by_role("textbox", name="知识库名称").last
    title.fill("人事与休假")
    title.press("Enter")  # committed before the click, as a person's typing is (a loaded machine raced the two)
    expect(title).to_have_value("人事与休假")
    main.get_by_role("button", name="重命名").click()
    expect(sidebar_index(page)).to_have_value("人事与休假")
    main.get_by_text("确认删除此知识库的索引").click()
    main.get_by_role("button", name="删除知识库").click()
    expect(main.get_by_text("已删除知识库“人事与休假”的索引")).to_be_visible()
    expect(sidebar_index(page)).to_have_value("default")
    assert not (server.knowledge.parent / "indexes" / "人事制度").exists() and (folder / "婚假.md").is_file()
    page.context.close()
