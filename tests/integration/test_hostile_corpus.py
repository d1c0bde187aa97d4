"""A folder of 30+ hostile files ingested end to end through rag.index.sync.sync_folder.

Every file is reported exactly once with a kind, no exception escapes, the whole ingest finishes in bounded time,
the parent's memory stays flat (parsing happens in capped worker processes), the good files are indexed and the
index passes its integrity check. The individual parsers are tested in tests/integration/test_load.py; this is the whole path.
"""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile
import zlib
from pathlib import Path

import psutil
import pytest

import rag.index.sync
from rag.core.config import load_config
from rag.embed.embedder import HashEmbedder
from rag.index.docstore import DocStore
from rag.index.integrity import check_integrity
from rag.index.layout import DOCSTORE
from rag.ingest.load import parse_files
from tests.broken_files import NOT_DISCOVERED, PASSWD_MARKER, file_writer, make_broken_corpus, write_pdf_objects

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0  # load.timeout_s of this run: no single parse may take longer
MEMORY_MB = 1024  # load.memory_mb: each worker's address-space cap
WALL_LIMIT_S = 150.0  # the whole ingest of the folder (about 40 files, two of them zip bombs) on a 2-core machine
PARENT_RSS_GROWTH_MB = 400  # the parent never holds a bomb's expansion: its RSS may not grow more than this
FAILED_KINDS = {"unsupported", "empty", "encrypted", "corrupt", "too_large", "timeout", "memory", "crashed", "encoding",
                "missing_dependency", "unreadable"}


# --- extra hostile files ----------------------------------------------------------------------------------------


def raw_pdf(objects: list[bytes]) -> bytes:
    """A PDF from numbered object bodies (object 1 is the catalog), with a correct xref table."""
    return write_pdf_objects(objects)


def _page_objects(text: str) -> list[bytes]:
    content = b"BT /F1 12 Tf 72 720 Td (" + text.encode() + b") Tj ET"
    return [
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]


def recursive_pages_pdf() -> bytes:
    """A /Pages tree that lists itself among its kids (an infinite tree for a naive walker)."""
    return raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",
                    *_page_objects("recursive tree page")])


def huge_page_count_pdf() -> bytes:
    """One real page, but the page tree claims two billion."""
    return raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 2147483647 >>",
                    *_page_objects("one page of two billion")])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header claims width x height pixels (1.2 GB of RGB) over a few bytes of data."""
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def docx_with_image(image: bytes) -> bytes:
    import docx

    document = docx.Document()
    document.add_paragraph("图片前面的文字：巨幅图片只有一个头。")
    document.add_picture(io.BytesIO(image))
    document.add_paragraph("图片后面的文字。")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def docx_with_huge_document_xml(unpacked_mb: int = 200) -> bytes:
    """A well-formed .docx whose word/document.xml is ``unpacked_mb`` MB of real paragraphs (deflates ~1000x)."""
    import docx

    buffer = io.BytesIO()
    docx.Document().save(buffer)
    out = io.BytesIO()
    paragraph = b"<w:p><w:r><w:t>" + "重复的段落。".encode() * 20 + b"</w:t></w:r></w:p>"
    block = paragraph * ((1 << 20) // len(paragraph))
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename != "word/document.xml":
                dst.writestr(info.filename, src.read(info.filename))
                continue
            head, _, tail = src.read(info.filename).partition(b"<w:body>")
            with dst.open("word/document.xml", "w", force_zip64=True) as member:
                member.write(head + b"<w:body>")
                for _ in range(unpacked_mb):
                    member.write(block)
                member.write(b"<w:sectPr/></w:body></w:document>")
    return out.getvalue()


XXE_PLAIN_HTML = (  # .html, not XHTML: lxml's HTML parser must not fetch the entity either
    '<!DOCTYPE html [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    "<html><body><p>外部实体不应展开：&xxe;</p></body></html>\n"
)
LAUGHS_XHTML = (
    '<?xml version="1.0"?>\n<!DOCTYPE html [\n'
    + "\n".join([' <!ENTITY a0 "ha">'] + [f' <!ENTITY a{i} "{f"&a{i - 1};" * 16}">' for i in range(1, 12)])
    + '\n]>\n<html xmlns="http://www.w3.org/1999/xhtml"><body><p>&a11;</p><p>XML 笑声炸弹之后的正文。</p></body></html>\n'
)


def make_more_hostile_files(folder: Path) -> dict[str, str]:
    """Write the hostile files make_broken_corpus does not have; return ``{name: expected kind or "ok"}``.

    Entries that are not regular files (a FIFO, symlink loops) are never discovered, so they are not in the result.
    """
    expected: dict[str, str] = {}
    put = file_writer(folder, expected)

    put("recursive_pages.pdf", recursive_pages_pdf(), "corrupt")  # pypdf: "Detected cyclic page references"
    put("huge_page_count.pdf", huge_page_count_pdf(), "ok")
    put("mixed_encoding.txt", "第一段是 UTF-8 编码的中文。\n".encode() + "第二段是 GBK 编码的中文，混在同一个文件里。\n".encode("gbk")
        + "第三段又回到 UTF-8。\n".encode(), "ok")
    put("nul_bytes.md", "# 标题\n\n正文\x00里有\x00空字节。\n\n## 第二节\n\n更多\x00内容。\n".encode(), "ok")
    put("deep_quotes.md", ">" * 50_000 + " 深层引用\n\n" + "- " * 20_000 + "深层列表\n\n最后一段正常文字。\n", "ok")
    put("deep_table.html", "<html><body>" + "<table><tr><td>" * 20_000 + "表格深处" + "</td></tr></table>" * 20_000
        + "<p>表格之后的段落。</p></body></html>", "ok")
    put("huge_image.png", huge_png(), "corrupt")  # over Pillow's MAX_IMAGE_PIXELS: refused before decoding
    put("huge_image.docx", docx_with_image(huge_png()), "ok")
    put("xxe.html", XXE_PLAIN_HTML, "ok")
    put("billion_laughs.xhtml", LAUGHS_XHTML, "ok")
    put("huge_document_xml.docx", docx_with_huge_document_xml(200), "corrupt")
    put("elf_binary.txt", b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64, "encoding")
    put("lone_surrogates.txt", "前文".encode() + b"\xed\xa0\x80\xed\xb0\x80" + "后文仍然可读。".encode() * 20, "ok")
    put("vanish_after_discovery.txt", "这个文件在发现之后、计算哈希之前被删除。\n", "unreadable")
    put("fifo_after_discovery.txt", "这个文件在发现之后被换成了命名管道。\n", "unreadable")
    put("vanish_before_parse.txt", "这个文件在计算哈希之后、解析之前被删除。\n", "corrupt")
    os.mkfifo(folder / "pipe.txt")  # not a regular file: reading it would block forever
    os.symlink("self_loop.txt", folder / "self_loop.txt")  # a link to itself
    (folder / "loopdir").mkdir()
    os.symlink("..", folder / "loopdir" / "up")  # a folder cycle
    os.symlink("../a_to_b", folder / "loopdir" / "b_to_a")  # two links pointing at each other
    os.symlink("loopdir/b_to_a", folder / "a_to_b")
    return expected


NOT_REGULAR = ("pipe.txt", "self_loop.txt", "loopdir/up", "loopdir/b_to_a", "a_to_b")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("hostile")
    expected = make_broken_corpus(folder, big_mb=50)
    expected.update(make_more_hostile_files(folder))
    return folder, expected


def _sample_rss(stop: threading.Event, peak: list[int]) -> None:
    process = psutil.Process()
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        stop.wait(0.05)


def test_hostile_folder_ingests_with_every_file_reported_once(
    hostile: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, expected = hostile
    assert len(expected) >= 30
    index = tmp_path / "index"
    cfg = load_config(None, [f"index.dir={index}", "embed.source=hash", "load.workers=2", f"load.timeout_s={TIMEOUT_S}",
                             f"load.memory_mb={MEMORY_MB}", "load.max_file_mb=10"])

    # Race the ingest: files disappear (or turn into a FIFO) after discovery, and another before its parse.
    real_discover, real_parse = rag.index.sync.discover_files, rag.index.sync.parse_files

    def discover_then_vanish(*args: object, **kwargs: object) -> list[Path]:
        found = real_discover(*args, **kwargs)  # type: ignore[arg-type]
        (folder / "vanish_after_discovery.txt").unlink()
        (folder / "fifo_after_discovery.txt").unlink()
        os.mkfifo(folder / "fifo_after_discovery.txt")
        return found

    def vanish_then_parse(items, cfg, progress=None, root=None):  # type: ignore[no-untyped-def]
        (folder / "vanish_before_parse.txt").unlink()
        return real_parse(items, cfg, progress, root)

    monkeypatch.setattr(rag.index.sync, "discover_files", discover_then_vanish)
    monkeypatch.setattr(rag.index.sync, "parse_files", vanish_then_parse)

    baseline = psutil.Process().memory_info().rss
    peak = [baseline]
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(stop, peak), daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        report = rag.index.sync.sync_folder(folder, cfg, HashEmbedder(dim=64), index_dir=index)
    finally:
        stop.set()
        sampler.join()
    wall = time.monotonic() - started

    reported = [f.source for f in report.files]
    assert sorted(reported) == sorted(expected)  # every file exactly once ...
    assert not set(reported) & {*NOT_DISCOVERED, *NOT_REGULAR}  # ... and nothing that is not a regular file inside
    outcome = {f.source: ("ok" if f.status == "new" else f.error_kind) for f in report.files}
    assert outcome == expected
    for f in report.files:
        assert f.status == ("skipped" if f.error_kind == "unsupported" else "failed" if f.error_kind else "new"), f
        assert f.status == "new" or (f.error_kind in FAILED_KINDS and f.error), f
        assert f.seconds <= TIMEOUT_S + 5, f  # no parse ran past its time limit
    assert wall < WALL_LIMIT_S, f"ingest of the hostile folder took {wall:.0f} s"
    assert (peak[0] - baseline) >> 20 < PARENT_RSS_GROWTH_MB, f"parent RSS grew {(peak[0] - baseline) >> 20} MB"

    assert check_integrity(index) == []
    docstore = DocStore(index / DOCSTORE, readonly=True)
    try:
        files = docstore.files()
        ok = sorted(name for name, kind in expected.items() if kind == "ok")
        assert sorted(name for name, record in files.items() if record.status == "ok") == ok
        assert all(files[name].chunks > 0 for name in ok)
        texts: dict[str, str] = {}
        for chunk in docstore.get_chunks(sorted(docstore.chunk_id_set())).values():
            texts[chunk.source] = texts.get(chunk.source, "") + "\n" + chunk.text
    finally:
        docstore.close()
    everything = "\n".join(texts.values())
    assert PASSWD_MARKER not in everything and "hidden secret" not in everything  # no XXE, no link out, no hidden file
    assert "lollol" not in everything and "hahaha" not in everything  # no entity expansion
    assert "表格之后的段落" in texts["deep_table.html"] and "深层内容" in texts["deep_nesting.html"]
    assert "GBK" in texts["mixed_encoding.txt"] and "UTF-8" in texts["mixed_encoding.txt"]
    assert "\x00" not in texts["nul_bytes.md"] and "空字节" in texts["nul_bytes.md"] and "内容" in texts["nul_bytes.md"]
    assert "巨幅图片" in texts["huge_image.docx"] and "后文仍然可读" in texts["lone_surrogates.txt"]
    assert "深层列表" in texts["deep_quotes.md"] and "最后一段正常文字" in texts["deep_quotes.md"]  # nothing dropped
    print(f"\nhostile corpus: {len(expected)} files, kinds {sorted(set(outcome.values()))}, wall {wall:.1f} s, "
          f"max parse {max(f.seconds for f in report.files):.2f} s, parent RSS +{(peak[0] - baseline) >> 20} MB")


def test_a_fifo_handed_to_the_parser_does_not_hang(tmp_path: Path) -> None:
    """Discovery skips FIFOs; if one still reaches the parser (a race), it is refused, never read."""
    os.mkfifo(tmp_path / "pipe.txt")
    cfg = load_config(None, ["load.timeout_s=5", "load.workers=1"]).load
    started = time.monotonic()
    (parsed,) = list(parse_files([(tmp_path / "pipe.txt", "pipe.txt")], cfg))
    assert not parsed.ok and parsed.error_kind in ("empty", "unreadable", "timeout", "corrupt")
    assert time.monotonic() - started < 15


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 000 does not stop root from reading a file")
def test_a_file_without_read_permission_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "good.txt").write_text("可以读的文件。\n", encoding="utf-8")
    locked = folder / "locked.txt"
    locked.write_text("没有读权限的文件。\n", encoding="utf-8")
    locked.chmod(0)
    cfg = load_config(None, [f"index.dir={tmp_path / 'index'}", "embed.source=hash", "load.workers=1"])
    try:
        report = rag.index.sync.sync_folder(folder, cfg, HashEmbedder(dim=64))
    finally:
        locked.chmod(0o644)
    outcome = {f.source: (f.status, f.error_kind) for f in report.files}
    assert outcome == {"good.txt": ("new", None), "locked.txt": ("failed", "unreadable")}
    assert check_integrity(tmp_path / "index") == []
