"""The page's helpers without Streamlit: uploads (sanitised, size-limited, inside the folder only), deletes, index and
document listings, settings, feedback JSONL, the UI text (rag.webui.text)."""

from __future__ import annotations

import json
import re
import string
import threading
from pathlib import Path

import pytest

from rag.core.config import LoadConfig, load_config
from rag.core.errors import ConfigError, RagError
from rag.embed.embedder import HashEmbedder
from rag.feedback import FeedbackCitation, FeedbackRecord, append_feedback, now_iso, read_feedback
from rag.index.sync import sync_folder
from rag.webui import kb
from rag.webui.text import TEXT, html_text, link_citations, passage_html, source_card, tr
from rag.webui.uploads import MAX_NAME_CHARS, UploadError, delete_document, safe_filename, save_upload, upload_suffixes
from tests.conftest import write_corpus

SUFFIXES = upload_suffixes(LoadConfig(use_unstructured=False))
MB = 2**20


# --- uploads --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "saved"), [
    ("报告.pdf", "报告.pdf"),
    ("../../etc/passwd.txt", "passwd.txt"),
    ("C:\\Users\\me\\Desktop\\年报 2024.DOCX", "年报 2024.docx"),
    ("..hidden.md", "hidden.md"),
    ("a<b>:c|d?.md", "a_b__c_d_.md"),
    ("tab\tand\nnewline\x00.txt", "tabandnewline.txt"),
    ("  spaced   name .md", "spaced name.md"),
    ("CON.txt", "_CON.txt"),
    ("x" * 300 + ".md", "x" * MAX_NAME_CHARS + ".md"),
])
def test_safe_filename(sent: str, saved: str) -> None:
    assert safe_filename(sent, SUFFIXES) == saved


@pytest.mark.parametrize(("sent", "kind"), [("run.exe", "unsupported"), ("README", "unsupported"), ("..", "unsupported"),
                                            (".md", "bad_name"), ("/../ .md", "bad_name"), ("\x00..pdf", "bad_name")])
def test_safe_filename_refuses(sent: str, kind: str) -> None:
    with pytest.raises(UploadError) as caught:
        safe_filename(sent, SUFFIXES)
    assert caught.value.kind == kind and caught.value.name == sent


def test_unsupported_upload_message_lists_what_is_supported() -> None:
    with pytest.raises(UploadError, match=r"^run\.exe: file type \.exe cannot be indexed; supported: .*\.pdf"):
        safe_filename("run.exe", SUFFIXES)


def test_save_upload_stays_inside_the_folder_and_leaves_no_temp_files(tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    saved = save_upload(folder, "../../../outside.md", "# 标题\n正文".encode(), MB, SUFFIXES)
    assert saved.path == folder / "outside.md" and saved.status == "new" and saved.source == "outside.md"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kb", "outside.md"]


def test_save_upload_size_limit_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match=r"^big\.txt is 2\.0 MB, over the upload limit of 1 MB$") as caught:
        save_upload(tmp_path, "big.txt", b"x" * (2 * MB), MB, SUFFIXES)
    assert caught.value.kind == "too_large"
    with pytest.raises(UploadError) as caught:
        save_upload(tmp_path, "empty.txt", b"", MB, SUFFIXES)
    assert caught.value.kind == "empty"
    assert list(tmp_path.iterdir()) == []


def test_save_upload_same_name(tmp_path: Path) -> None:
    first = save_upload(tmp_path, "a.md", b"one", MB, SUFFIXES)
    assert save_upload(tmp_path, "a.md", b"one", MB, SUFFIXES).status == "unchanged"
    renamed = save_upload(tmp_path, "a.md", b"two", MB, SUFFIXES)
    assert (renamed.source, renamed.status) == ("a (2).md", "renamed") and first.path.read_bytes() == b"one"
    replaced = save_upload(tmp_path, "a.md", b"three", MB, SUFFIXES, replace=True)
    assert (replaced.source, replaced.status) == ("a.md", "replaced") and first.path.read_bytes() == b"three"


def test_save_upload_never_writes_through_a_symlink(tmp_path: Path) -> None:
    folder, outside = tmp_path / "kb", tmp_path / "secret.md"
    folder.mkdir()
    outside.write_text("keep me", encoding="utf-8")
    (folder / "notes.md").symlink_to(outside)
    saved = save_upload(folder, "notes.md", b"new", MB, SUFFIXES, replace=True)
    assert saved.source == "notes (2).md" and outside.read_text(encoding="utf-8") == "keep me"


def test_delete_document(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "kb")
    assert delete_document(folder, "hr/年假.md") and not (folder / "hr" / "年假.md").exists()
    assert delete_document(folder, "hr/年假.md") is False
    (tmp_path / "precious.txt").write_text("x", encoding="utf-8")
    for bad in ("../precious.txt", str(tmp_path / "precious.txt"), "hr/../../precious.txt"):
        with pytest.raises(RagError, match="is not a document inside"):
            delete_document(folder, bad)
    with pytest.raises(RagError, match="is not a file"):
        delete_document(folder, "运维")
    assert (tmp_path / "precious.txt").exists()


def test_reindex_after_delete_removes_the_chunks_and_lists_follow(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "kb")
    cfg = load_config(None, [f"index.dir={tmp_path / 'indexes' / 'main'}", "embed.source=hash", "load.workers=1"])
    assert kb.list_documents(cfg.index.dir) == []
    assert kb.list_indexes(tmp_path / "indexes", always=cfg.index.dir) == [cfg.index.dir]
    report = kb.reindex(folder, cfg, cfg.index.dir, HashEmbedder())
    assert report.count("new") == 4
    delete_document(folder, "运维/打印机.txt")
    report = kb.reindex(folder, cfg, cfg.index.dir, HashEmbedder())
    assert [(f.source, f.status) for f in report.files if f.status != "unchanged"] == [("运维/打印机.txt", "deleted")]
    assert [d.source for d in kb.list_documents(cfg.index.dir)] == ["en/vpn.md", "hr/年假.md", "运维/磁盘.md"]
    sync_folder(folder, load_config(None, ["embed.source=hash", "load.workers=1"]), HashEmbedder(),
                index_dir=tmp_path / "indexes" / "other")
    (tmp_path / "indexes" / "empty").mkdir()
    assert [Path(p).name for p in kb.list_indexes(tmp_path / "indexes")] == ["main", "other"]


# --- settings -------------------------------------------------------------------------------------------------------


def test_app_settings_environment_over_secrets_over_defaults() -> None:
    assert kb.app_settings({}, {}) == kb.AppSettings()
    settings = kb.app_settings({"KBQA_PASSWORD": "env-pw", "KBQA_MAX_UPLOAD_MB": "10"},
                               {"password": "secret-pw", "max_upload_mb": 5, "feedback_path": "fb.jsonl"})
    assert (settings.password, settings.max_upload_mb, settings.feedback_path) == ("env-pw", 10.0, "fb.jsonl")
    assert kb.app_settings({}, {"password": "secret-pw"}).password == "secret-pw"


@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_app_settings_bad_numbers(value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^KBQA_MAX_UPLOAD_MB / secrets max_upload_mb={value!r} must be a positive"):
        kb.app_settings({"KBQA_MAX_UPLOAD_MB": value}, {})


def test_config_source_reads_path_and_quoted_overrides(tmp_path: Path) -> None:
    environ = {"KBQA_CONFIG": "", "KBQA_OVERRIDES": f"retrieve.top_k=3 'knowledge_dir={tmp_path}/my docs'"}
    source = kb.config_source(environ)
    assert source == ("", ("retrieve.top_k=3", f"knowledge_dir={tmp_path}/my docs"))
    cfg = kb.load_app_config(source)
    assert cfg.retrieve.top_k == 3 and cfg.knowledge_dir == f"{tmp_path}/my docs"
    with pytest.raises(ConfigError, match="KBQA_OVERRIDES is not valid shell quoting"):
        kb.config_source({"KBQA_OVERRIDES": "a='b"})


# --- feedback -------------------------------------------------------------------------------------------------------


def record(rating: str, correction: str = "", record_id: str = "t1") -> FeedbackRecord:
    return FeedbackRecord(time=now_iso(), question="年假几天？", answer="五天[1]。", rating=rating,
                             correction=correction, citations=[FeedbackCitation(1, "hr/年假.md", None, "五天")],
                             model="extractive", adapter="", id=record_id)


def test_feedback_jsonl_is_utf8_one_object_a_line_and_last_per_id_wins(tmp_path: Path) -> None:
    path = tmp_path / "feedback" / "feedback.jsonl"
    append_feedback(path, record("down"))
    append_feedback(path, record("up", record_id="t2"))
    append_feedback(path, record("down", "五个工作日", record_id="t1"))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and "年假几天" in lines[0]  # not \u-escaped
    assert json.loads(lines[0])["citations"] == [{"number": 1, "source": "hr/年假.md", "page": None, "quote": "五天"}]
    latest = read_feedback(path)
    assert [(r["id"], r["rating"], r["correction"]) for r in latest] == [("t2", "up", ""), ("t1", "down", "五个工作日")]
    with pytest.raises(ValueError, match="rating='meh' must be one of up, down"):
        append_feedback(path, record("meh"))


def test_feedback_appends_from_many_threads_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"
    threads = [threading.Thread(target=append_feedback, args=(path, record("up", "字" * 5000, f"id{i}")))
               for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()) == sorted(
        f"id{i}" for i in range(16))


# --- UI text --------------------------------------------------------------------------------------------------------


def test_both_languages_have_the_same_keys_and_placeholders() -> None:
    assert TEXT["zh"].keys() == TEXT["en"].keys()
    fields = {lang: {key: {f for _, f, _, _ in string.Formatter().parse(text) if f}
                     for key, text in TEXT[lang].items()} for lang in TEXT}
    assert fields["zh"] == fields["en"]
    assert tr("zh", "queued", ahead=2).startswith("正在排队：你前面还有 2 个请求")
    assert tr("fr", "sources") == "来源"  # unknown language: Chinese


def test_document_text_is_inert_in_the_page() -> None:
    hostile = '<script>alert(1)</script> **bold** [x](javascript:alert(1)) $x^2$ `code`\n\n\n# 标题'
    shown = html_text(hostile)
    assert "<script>" not in shown and "&lt;script&gt;" in shown
    for char in "*[]$`#":
        assert char not in re.sub(r"&#?\w+;", "", shown)  # only as entities, which markdown leaves alone
    assert shown.count("<br>") == 1  # blank lines collapse
    card = source_card('x" onmouseover="y', 1, "a<b>.md · 第 2 页", shown, badge="<i>")
    assert 'id="x&quot; onmouseover=&quot;y"' in card and "a&lt;b&gt;.md" in card and "<i>" not in card


def test_passage_highlight_and_citation_links() -> None:
    text = "第一句。\n\n第二句  有空格。第三句。"
    assert passage_html(text, "第二句 有空格。") == "第一句。<br><mark>第二句  有空格。</mark>第三句。"
    assert passage_html(text, "不存在的句子。") == "第一句。<br>第二句  有空格。第三句。"
    assert link_citations("五天[1]。十天[2][3]，费用 $5。", "src-t", {1, 3}) == (
        "五天[\\[1\\]](#src-t-1)。十天\\[2\\][\\[3\\]](#src-t-3)，费用 \\$5。")
