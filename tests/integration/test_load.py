"""Tests for rag.ingest.load / rag.ingest.parsers.pdf: every format, every hostile file, and the worker-process isolation."""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.core.config import LoadConfig
from rag.core.errors import ConfigError, LoadError, RagError
from rag.core.types import Document, ParsedFile
from rag.ingest.load import discover_files, parse_file, parse_files, parse_one_isolated
from rag.ingest.parsers import pdf as parsers
from rag.ingest.parsers.text import decode_text, normalize_text
from rag.ingest.worker import TEST_HOOKS_ENV
from tests.broken_files import (
    BIG5_TEXT,
    GBK_TEXT,
    NOT_DISCOVERED,
    PASSWD_MARKER,
    UTF16_TEXT,
    corpus_load_config,
    make_broken_corpus,
    make_hanging_file,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("broken")
    return folder, make_broken_corpus(folder, big_mb=50)


def parse(broken: tuple[Path, dict[str, str]], name: str, **overrides: object) -> list[Document]:
    return parse_file(broken[0] / name, name, corpus_load_config(**overrides))


def load_error(broken: tuple[Path, dict[str, str]], name: str, **overrides: object) -> LoadError:
    with pytest.raises(LoadError) as info:
        parse(broken, name, **overrides)
    return info.value


def sections(documents: list[Document]) -> dict[tuple[str, ...], str]:
    return {document.heading: document.text for document in documents}


# --- discovery ---------------------------------------------------------------------------------------------------


def test_discover_returns_every_visible_file_sorted(broken: tuple[Path, dict[str, str]]) -> None:
    folder, expected = broken
    found = [path.relative_to(folder).as_posix() for path in discover_files(folder, corpus_load_config())]
    assert found == sorted(expected)
    assert not set(found) & set(NOT_DISCOVERED)  # hidden file, hidden folder, link to /etc/passwd


def test_discover_skips_exclude_folder_patterns_and_link_loops(tmp_path: Path) -> None:
    for name in ("a/x.md", "a/drafts/d.txt", "index/docstore.sqlite", "index/part.txt", "notes.tmp", "b.txt", "~$b.docx"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("text", encoding="utf-8")
    os.symlink(tmp_path / "a", tmp_path / "link_to_a")  # same folder under a second name: visited once
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a cycle
    os.mkfifo(tmp_path / "a" / "pipe.txt")  # not a regular file: reading it would block
    cfg = LoadConfig(skip_patterns=["*.tmp", "drafts"])
    found = [p.relative_to(tmp_path).as_posix() for p in discover_files(tmp_path, cfg, exclude=[tmp_path / "index"])]
    assert found == ["a/x.md", "b.txt"]


def test_discover_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RagError, match="does not exist or is not a folder"):
        discover_files(tmp_path / "nope", LoadConfig())


# --- every format --------------------------------------------------------------------------------------------------


def test_pdf_one_document_per_page_with_text(broken: tuple[Path, dict[str, str]]) -> None:
    documents = parse(broken, "valid.pdf")
    assert [d.page for d in documents] == [1, 3]  # page 2 is blank
    assert documents[0].text == "Hello PDF page one\nSecond line of page one"
    assert documents[1].text == "第二页：中文测试内容\nEnglish and 中文 mixed"  # "中 文": the CJK gap is removed
    assert documents[0].metadata == {"parser": "pypdfium2", "page_count": "3"}
    assert documents[0].source == "valid.pdf" and documents[0].heading == ()


def test_pdf_pypdf_engine_and_fallback(broken: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    by_pypdf = parse(broken, "valid.pdf", pdf_engine="pypdf")
    assert [(d.page, d.text, d.metadata["parser"]) for d in by_pypdf] == [
        (1, "Hello PDF page one\nSecond line of page one", "pypdf"),
        (3, "第二页：中文测试内容\nEnglish and 中文 mixed", "pypdf"),
    ]

    def refuse(path: Path) -> list[str]:
        raise RuntimeError("pdfium cannot read this")

    monkeypatch.setattr(parsers, "pdf_pages_pdfium", refuse)
    assert [d.metadata["parser"] for d in parse(broken, "valid.pdf")] == ["pypdf", "pypdf"]
    error = load_error(broken, "truncated.pdf")
    assert error.kind == "corrupt" and "pypdfium2: RuntimeError: pdfium cannot read this; pypdf: " in str(error)


def test_pdf_failures_have_actionable_messages(broken: tuple[Path, dict[str, str]]) -> None:
    error = load_error(broken, "encrypted.pdf")
    assert (error.kind, str(error)) == ("encrypted", "the PDF is password-protected; remove the password and re-run")
    error = load_error(broken, "scanned.pdf")
    assert (error.kind, str(error)) == ("empty", "the PDF has no text layer and no picture with text (load.ocr=force "
                                        "also reads text drawn as shapes)")
    error = load_error(broken, "scanned.pdf", ocr="off")
    assert (error.kind, str(error)) == (
        "empty", "the PDF has no text layer (scanned?); set load.ocr=auto to read it with OCR")
    assert load_error(broken, "truncated.pdf", pdf_engine="pypdf").kind == "corrupt"


def test_html_sections_headings_tables_and_dropped_elements(broken: tuple[Path, dict[str, str]]) -> None:
    documents = parse(broken, "zh.html")
    assert sections(documents) == {
        ("用户手册",): "前言：这是手册的开头。",  # no h1: <title> is the outermost heading
        ("用户手册", "安装"): "第一步，下载安装包。",  # a line break between CJK characters is not a space
        ("用户手册", "安装", "驱动"): "打印机驱动\n\n网卡驱动\n\n名称 | 版本\n驱动 | 1.2",
        ("用户手册", "卸载"): "删除程序\n然后重启。",
    }
    text = "".join(d.text for d in documents)
    assert "SCRIPT_TEXT" not in text and "NOSCRIPT_TEXT" not in text and "首页" not in text and "color" not in text
    assert documents[0].metadata == {"parser": "beautifulsoup-lxml", "encoding": "utf-8", "title": "用户手册"}


def test_html_encoding_from_meta_and_h1_outermost(broken: tuple[Path, dict[str, str]]) -> None:
    (document,) = parse(broken, "zh_gbk.html")
    assert document.heading == ("简体中文页面",)
    assert document.text == "这个页面使用GB2312编码保存。"
    assert document.metadata["encoding"] == "gb2312" and document.metadata["title"] == "编码测试"


def test_html_billion_laughs_and_deep_nesting_are_harmless(broken: tuple[Path, dict[str, str]]) -> None:
    started = time.monotonic()
    (laughs,) = parse(broken, "billion_laughs.html")
    assert "正文仍然可读。" in laughs.text and "lollol" not in laughs.text and len(laughs.text) < 100
    (deep,) = parse(broken, "deep_nesting.html")
    assert deep.text == "深层内容"
    assert time.monotonic() - started < 15


def test_markdown_sections_atx_setext_code_tables_lists(broken: tuple[Path, dict[str, str]]) -> None:
    documents = parse(broken, "guide.md")
    assert sections(documents) == {
        (): "Intro text before any heading.",  # the front matter is gone
        ("用户指南",): "第一段文字。\n同一段的第二行。",
        ("用户指南", "安装步骤"): 'print("code kept")\n\n名称 | 版本\n驱动 | 1.2\n\n- item one\n- item two\n\n1. first\n2. second',
        ("用户指南", "Setup"): "Setup text with code.",
        ("附录",): "最后一段。",
    }
    assert documents[0].metadata == {"parser": "markdown-it", "encoding": "utf-8"}


def test_docx_heading_path_chinese_heading_style_and_table(broken: tuple[Path, dict[str, str]]) -> None:
    assert sections(parse(broken, "valid.docx")) == {
        ("Installation Guide",): "Intro paragraph under the first heading.",
        ("Installation Guide", "Drivers"): "Install the printer driver first.",
        ("Installation Guide", "网络设置"): (
            "先连接网络，再打开浏览器。\n\n名称 | 版本 | 备注\n驱动 | 1.2 | 必需\n\nAfter the table.\n\n内容控件里的文字。"
        ),
    }


def test_docx_xxe_and_entity_bomb_do_not_leak_or_expand(broken: tuple[Path, dict[str, str]]) -> None:
    assert PASSWD_MARKER in Path("/etc/passwd").read_text(encoding="utf-8")  # the test would prove nothing otherwise
    (document,) = parse(broken, "xxe.docx")
    assert document.text == "before"  # the external entity stays unresolved
    error = load_error(broken, "entity_bomb.docx")
    assert error.kind == "corrupt" and "amplification" in str(error)


def test_docx_zip_bomb_and_non_zip(broken: tuple[Path, dict[str, str]]) -> None:
    error = load_error(broken, "zip_bomb.docx")
    assert (error.kind, str(error)) == ("corrupt", "looks like a zip bomb: 0.1 MB would unpack to 120 MB; the file was skipped")
    error = load_error(broken, "not_a_zip.docx")
    assert error.kind == "corrupt" and str(error).startswith("the file is not a valid .docx (not a zip archive")


@pytest.mark.parametrize(
    ("name", "text", "encoding"),
    [("gbk.txt", GBK_TEXT, "gb18030"), ("big5.txt", BIG5_TEXT, "big5"), ("utf16.txt", UTF16_TEXT, "utf-16")],
)
def test_text_encodings_are_detected(broken: tuple[Path, dict[str, str]], name: str, text: str, encoding: str) -> None:
    (document,) = parse(broken, name)
    assert document.text == text.strip("\n")
    assert document.metadata == {"parser": "text", "encoding": encoding}
    assert document.heading == () and document.page is None


def test_text_decoding_rules() -> None:
    assert decode_text("中文".encode("utf-32")) == ("中文", "utf-32")
    assert decode_text(b"\xef\xbb\xbfBOM") == ("BOM", "utf-8-sig")
    with pytest.raises(LoadError, match="^looks like binary data, not text$"):
        decode_text(b"\x01\x02\x03\x04 abc \x05\x06\x07\x08")  # no NUL, but mostly control characters


def test_binary_empty_unsupported_and_too_large_messages(broken: tuple[Path, dict[str, str]]) -> None:
    for name in ("binary.txt", "binary.md"):
        error = load_error(broken, name)
        assert (error.kind, str(error)) == ("encoding", "looks like binary data, not text")
    assert str(load_error(broken, "empty.txt")) == "the file is empty (0 bytes)"
    assert str(load_error(broken, "blank.md")) == "no text found in the file"
    error = load_error(broken, "big_single_line.txt")
    assert (error.kind, str(error)) == ("too_large", "the file is 50.5 MB, over load.max_file_mb=10; raise the limit to parse it")
    error = load_error(broken, "data.xyz")
    assert error.kind == "unsupported" and str(error).startswith("unsupported file type .xyz; supported: .bmp .csv .docx")


def test_long_tail_formats_need_the_unstructured_extra(tmp_path: Path) -> None:
    slides = tmp_path / "slides.ppt"
    slides.write_bytes(b"\xd0\xcf\x11\xe0 not really")
    with pytest.raises(LoadError) as info:
        parse_file(slides, "slides.ppt", LoadConfig(use_unstructured=False))
    assert info.value.kind == "unsupported" and "load.use_unstructured=true" in str(info.value)
    if importlib.util.find_spec("unstructured") is not None:
        pytest.skip("unstructured is installed here")
    with pytest.raises(LoadError) as info:
        parse_file(slides, "slides.ppt", LoadConfig())
    assert (info.value.kind, str(info.value)) == (
        "missing_dependency",
        ".ppt files need the optional 'unstructured' extra: pip install -r requirements-extra.txt",
    )


def test_every_corpus_file_gets_its_expected_kind_in_process(broken: tuple[Path, dict[str, str]]) -> None:
    folder, expected = broken
    got = {}
    for name in expected:
        try:
            parse(broken, name)
            got[name] = "ok"
        except LoadError as exc:
            got[name] = exc.kind
    assert got == expected


def test_normalize_text() -> None:
    assert normalize_text("a  \r\nb\t\r\n\r\n\r\n\r\nc\x00\x07\ufeff ") == "a\nb\n\nc"
    assert normalize_text("中 文 English words 中\t文", join_cjk=True) == "中文 English words 中文"
    assert normalize_text("中 文") == "中 文"
    started = time.monotonic()
    assert normalize_text(" " * 2_000_000 + "x" + " " * 10) == " " * 2_000_000 + "x"  # no regex backtracking
    assert time.monotonic() - started < 2


def test_bad_pdf_engine_is_a_config_error(broken: tuple[Path, dict[str, str]]) -> None:
    with pytest.raises(ConfigError, match=r"^load.pdf_engine='fitz' is not one of pypdfium2, pypdf$"):
        parse(broken, "valid.pdf", pdf_engine="fitz")


# --- isolation: worker processes -----------------------------------------------------------------------------------


def test_parse_files_reports_every_corpus_file_once(broken: tuple[Path, dict[str, str]]) -> None:
    folder, expected = broken
    seen: list[str] = []
    items = [(path, path.relative_to(folder).as_posix()) for path in discover_files(folder, corpus_load_config())]
    results = list(parse_files(items, corpus_load_config(), progress=lambda parsed: seen.append(parsed.source)))
    assert sorted(parsed.source for parsed in results) == sorted(expected)
    assert seen == [parsed.source for parsed in results]
    assert {parsed.source: parsed.error_kind or "ok" for parsed in results} == expected
    by_source = {parsed.source: parsed for parsed in results}
    assert by_source["valid.pdf"].pages == 3 and [d.page for d in by_source["valid.pdf"].documents] == [1, 3]
    assert by_source["valid.docx"].pages == 1 and by_source["encrypted.pdf"].pages == 0
    assert by_source["gbk.txt"].documents[0].text == GBK_TEXT.strip("\n")
    assert all(parsed.seconds >= 0 for parsed in results)
    assert not [p.source for p in results for d in p.documents if PASSWD_MARKER in d.text]  # no XXE anywhere
    assert by_source["encrypted.pdf"].error == "the PDF is password-protected; remove the password and re-run"
    # what crossed the process boundary equals the in-process result, and pickles
    assert list(by_source["zh.html"].documents) == parse(broken, "zh.html")
    assert pickle.loads(pickle.dumps(by_source["zh.html"])) == by_source["zh.html"]


def test_timeout_kills_the_parse_and_later_files_still_parse(
    broken: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    folder, _ = broken
    hanging = make_hanging_file(tmp_path)
    items = [(hanging, "hang"), (folder / "gbk.txt", "gbk.txt"), (folder / "valid.pdf", "valid.pdf")]
    started = time.monotonic()
    results = {parsed.source: parsed for parsed in parse_files(items, corpus_load_config(timeout_s=1.0, workers=1))}
    assert time.monotonic() - started < 1.0 + 5
    assert (results["hang"].error_kind, results["hang"].error) == (
        "timeout",
        "parsing took longer than 1 s (load.timeout_s); the file was skipped",
    )
    assert 1.0 <= results["hang"].seconds < 3
    assert results["gbk.txt"].ok and results["valid.pdf"].ok


def test_crashed_worker_is_replaced(broken: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    crashing = make_hanging_file(tmp_path, "boom__crash__.txt")
    items = [(crashing, "boom"), (broken[0] / "guide.md", "guide.md")]
    results = {parsed.source: parsed for parsed in parse_files(items, corpus_load_config(workers=1))}
    assert results["boom"].error_kind == "crashed"
    assert results["boom"].error == "the parser process crashed (exit code -6 (SIGABRT)); the file was skipped"
    assert results["guide.md"].ok


def test_memory_cap_turns_a_blow_up_into_a_failure(broken: tuple[Path, dict[str, str]]) -> None:
    folder, _ = broken
    cfg = corpus_load_config(max_file_mb=100, memory_mb=100, workers=1)  # 50 MB of text cannot fit beside Python
    items = [(folder / "big_single_line.txt", "big"), (folder / "valid.docx", "valid.docx")]
    results = {parsed.source: parsed for parsed in parse_files(items, cfg)}
    assert results["big"].error_kind == "memory"
    assert results["big"].error == "parsing needed more than 100 MB of memory (load.memory_mb); the file was skipped"
    assert results["valid.docx"].ok  # a fresh worker took over


def test_big_single_line_parses_in_bounded_time(broken: tuple[Path, dict[str, str]]) -> None:
    started = time.monotonic()
    parsed = parse_one_isolated(broken[0] / "big_single_line.txt", "big", corpus_load_config(max_file_mb=100))
    assert parsed.ok, parsed.error
    (document,) = parsed.documents
    assert document.text.endswith("END_OF_BIG_LINE") and len(document.text) > 50 << 20
    assert time.monotonic() - started < 20


def _worker_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if f"\nPPid:\t{os.getpid()}\n" in status and b"worker_main" in cmdline and "\nState:\tZ" not in status:
            pids.append(int(entry))
    return pids


def test_closing_the_iterator_early_kills_the_workers(
    broken: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    items = [(broken[0] / "gbk.txt", "gbk.txt")] + [(make_hanging_file(tmp_path, f"h{i}__sleep__.txt"), f"h{i}") for i in range(2)]
    results = parse_files(items, corpus_load_config(workers=2))
    assert next(results).source == "gbk.txt"
    assert len(_worker_pids()) == 2  # both workers are busy sleeping
    results.close()
    assert _worker_pids() == []


def test_worker_start_up_imports_no_heavy_module() -> None:
    code = "import sys, rag.ingest.load; print(sorted(m for m in ('torch', 'transformers', 'bs4', 'docx', 'pypdfium2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_a_slow_consumer_does_not_turn_finished_parses_into_timeouts(broken: tuple[Path, dict[str, str]]) -> None:
    folder, _ = broken
    items = [(folder / name, name) for name in ("gbk.txt", "valid.pdf", "guide.md", "zh.html")]
    results = []
    for parsed in parse_files(items, corpus_load_config(timeout_s=1.0, workers=2)):
        results.append(parsed)
        if len(results) == 1:
            time.sleep(1.2)  # e.g. embedding this file's chunks, while the other worker's reply waits in its pipe
    assert [parsed.error_kind for parsed in results] == [None] * 4
    assert all(parsed.seconds < 1.0 for parsed in results)  # the worker's own parse time, not the wait


def test_unstructured_path_groups_elements_by_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The optional extra's contract (partition(filename=...) -> elements with .text and .metadata.page_number),
    checked against a stand-in package: unstructured itself is not installed here."""
    fake = tmp_path / "site" / "unstructured" / "partition"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("", encoding="utf-8")
    (fake / "__init__.py").write_text("", encoding="utf-8")
    (fake / "auto.py").write_text(
        "from types import SimpleNamespace as NS\n"
        "def partition(filename):\n"
        "    return [NS(text='第一页标题', metadata=NS(page_number=1)), NS(text='正文', metadata=NS(page_number=1)),\n"
        "            NS(text='第二页', metadata=NS(page_number=2))]\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    slides = tmp_path / "deck.ppt"
    slides.write_bytes(b"\xd0\xcf\x11\xe0 a stand-in never opens it")
    try:
        documents = parse_file(slides, "deck.ppt", LoadConfig())
    finally:  # later tests must not see the stand-in
        for name in [name for name in sys.modules if name.split(".")[0] == "unstructured"]:
            del sys.modules[name]
    assert [(d.page, d.text, d.metadata["parser"]) for d in documents] == [
        (1, "第一页标题\n\n正文", "unstructured"),
        (2, "第二页", "unstructured"),
    ]


def test_a_slow_consumer_and_a_multi_megabyte_reply_are_not_a_timeout_but_a_hang_still_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 15: while the caller embedded an earlier result, the parse deadline kept running, and a reply larger than
    # the pipe buffer was half read when the expiry check looked, so a file that parses in 0.3 s came back "timeout".
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    small = tmp_path / "small.txt"
    small.write_text("a small file that parses at once\n", encoding="utf-8")
    # ~2.7 MB of text -> a 3 MB reply, 46 times the 64 KB pipe buffer; "__slowreply__": the worker sends it in 32 KB
    # pieces with short pauses, as on a busy machine, so the parent finds the pipe empty between its reads
    big = tmp_path / "big__slowreply__.txt"
    big.write_text("".join(f"第 {i} 行：一个解析结果有几 MB 的文件。\n" for i in range(50_000)), encoding="utf-8")
    hanging = make_hanging_file(tmp_path)
    timeout_s = 3.0
    items = [(small, "small"), (big, "big"), (hanging, "hang")]
    results: dict[str, ParsedFile] = {}
    for parsed in parse_files(items, corpus_load_config(timeout_s=timeout_s, workers=2)):
        results[parsed.source] = parsed
        if len(results) < len(items):
            time.sleep(timeout_s + 0.5)  # the caller embeds this file's chunks; the other worker's reply waits
    assert results["small"].ok and results["big"].ok, (results["small"].error, results["big"].error)
    assert "".join(document.text for document in results["big"].documents).count("\n") >= 49_999
    assert results["big"].seconds < timeout_s  # the worker's own parse time, not the caller's
    assert (results["hang"].error_kind, results["hang"].error) == (
        "timeout",
        f"parsing took longer than {timeout_s:g} s (load.timeout_s); the file was skipped",
    )
    assert results["hang"].seconds >= timeout_s
