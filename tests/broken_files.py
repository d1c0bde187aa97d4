"""Build a folder of valid and hostile files for loader tests (reused by ingest / index tests).

``make_broken_corpus(folder)`` writes every file and returns ``{relative path: expected kind}``, where the kind is
``"ok"`` or the :class:`rag.core.errors.LoadError` kind that ``rag.ingest.load`` must report. The expectations hold for
:func:`corpus_load_config` (``max_file_mb`` below ``big_mb``, so the big single-line file is ``too_large``).

Everything is generated here, offline, with no font or model files: the PDFs are written by hand (a standard Type1
font for English, and a Type0 font with a ``ToUnicode`` CMap for Chinese, which is all text extraction needs).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

from rag.core.config import LoadConfig

# Files that exist in the corpus but that discover_files must NOT return (hidden, or a link out of the folder).
NOT_DISCOVERED = (".secret.txt", ".hidden_dir/inside.md", "outside_link.txt")

# Text the valid files carry, so tests can check what came out.
PDF_PAGES: tuple[list[str], ...] = (["Hello PDF page one", "Second line of page one"], [], ["第二页：中文测试内容", "English and 中 文 mixed"])
GBK_TEXT = "这是一个使用GBK编码的中文文本文件。\n知识库问答系统应该正确识别它的编码，并且读出原来的文字。\n"
BIG5_TEXT = "這是一個使用繁體中文的文字檔案，編碼為大五碼。\n知識庫問答系統應該正確識別它的編碼，並且讀出原來的文字。\n"
UTF16_TEXT = "UTF-16 文件，带有字节顺序标记。\n第二行。\n"
PASSWD_MARKER = "root:x:0:0"  # what /etc/passwd content looks like; must never appear in parsed text


def corpus_load_config(**overrides: object) -> LoadConfig:
    """The LoadConfig the expectations of :func:`make_broken_corpus` hold for (small files limit, short timeout)."""
    values: dict[str, object] = {"max_file_mb": 10.0, "timeout_s": 60.0, "workers": 2, "memory_mb": 2048}
    values.update(overrides)
    return LoadConfig(**values)  # type: ignore[arg-type]


def make_broken_corpus(folder: Path, big_mb: int = 50) -> dict[str, str]:
    """Write the hostile corpus into ``folder`` and return ``{relative posix path: expected kind or "ok"}``.

    Args:
        folder: where to write (created if missing).
        big_mb: size of ``big_single_line.txt`` (one 50 MB line by default; 0 leaves it out). It is expected to be
            ``too_large`` under :func:`corpus_load_config`; ``tests/integration/test_load.py`` separately parses a big single
            line with a raised ``max_file_mb`` and checks it finishes in bounded time.

    Returns:
        The expected outcome of every file ``discover_files`` should find (hidden files are in ``NOT_DISCOVERED``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    put = file_writer(folder, expected)

    valid_pdf = make_pdf(PDF_PAGES)
    put("valid.pdf", valid_pdf, "ok")
    put("truncated.pdf", valid_pdf[:120], "corrupt")
    put("encrypted.pdf", encrypt_pdf(valid_pdf, "secret"), "encrypted")
    put("scanned.pdf", make_pdf([[]], drawing=True), "empty")
    put("not_really.pdf", b"<html>this is not a PDF</html>\n", "corrupt")
    put("empty.txt", b"", "empty")
    put("blank.md", "  \n\n\t \n", "empty")
    rng = random.Random(0)
    binary = bytes(rng.randrange(256) for _ in range(4096))
    put("binary.txt", binary, "encoding")
    put("binary.md", b"\x89PNG\r\n\x1a\n" + binary, "encoding")
    put("gbk.txt", GBK_TEXT.encode("gbk"), "ok")
    put("big5.txt", BIG5_TEXT.encode("big5"), "ok")
    put("utf16.txt", UTF16_TEXT.encode("utf-16"), "ok")  # Python's utf-16 codec writes a BOM
    put("notes.csv", "名称,数量\n苹果,3\n", "ok")
    if big_mb > 0:
        write_big_single_line(folder / "big_single_line.txt", big_mb)
        expected["big_single_line.txt"] = "too_large"
    put("zip_bomb.docx", make_zip_bomb(), "corrupt")
    put("not_a_zip.docx", b"PK but not really a zip file" * 10, "corrupt")
    put("xxe.docx", make_docx_with_doctype(XXE_DOCTYPE, "&xxe;"), "ok")
    put("entity_bomb.docx", make_docx_with_doctype(LAUGHS_DOCTYPE, "&lol9;"), "corrupt")  # libxml2 refuses it
    put("billion_laughs.html", BILLION_LAUGHS_HTML, "ok")
    put("xxe.xhtml", XXE_HTML, "ok")
    put("deep_nesting.html", "<html><body>" + "<div>" * 100_000 + "深层内容" + "</div>" * 100_000 + "</body></html>", "ok")
    put("valid.docx", make_valid_docx(), "ok")
    put("guide.md", VALID_MARKDOWN, "ok")
    put("zh.html", VALID_HTML, "ok")
    put("zh_gbk.html", GBK_HTML.encode("gbk"), "ok")
    put("sub/dir/nested.txt", "嵌套目录里的文件。\n", "ok")
    put("data.xyz", b"whatever", "unsupported")
    (folder / ".secret.txt").write_text("hidden secret", encoding="utf-8")
    (folder / ".hidden_dir").mkdir(exist_ok=True)
    (folder / ".hidden_dir" / "inside.md").write_text("# hidden\n", encoding="utf-8")
    link = folder / "outside_link.txt"
    if not link.is_symlink():
        with contextlib.suppress(OSError):  # no symlinks on this filesystem: nothing to test then
            os.symlink("/etc/passwd", link)
    return expected


def make_hanging_file(folder: Path, name: str = "hang__sleep__.txt") -> Path:
    """A valid text file whose parse sleeps forever in a worker when ``rag.ingest.load.TEST_HOOKS_ENV`` is set to ``1``.

    Other hooks by name: ``__hog__`` allocates until the worker's memory cap, ``__crash__`` aborts the worker,
    ``__slowreply__`` sends the reply in 32 KB pieces with pauses.
    """
    path = folder / name
    path.write_text("this file would parse fine without the test hook\n", encoding="utf-8")
    return path


def write_big_single_line(path: Path, size_mb: int) -> None:
    """One line of ``size_mb`` MiB of ASCII words (no newline) ending with ``END_OF_BIG_LINE``."""
    block = ("lorem ipsum dolor sit amet " * 40_000).encode()  # about 1 MiB
    with path.open("wb") as out:
        written = 0
        while written < size_mb << 20:
            out.write(block)
            written += len(block)
        out.write(b" END_OF_BIG_LINE")


# --- PDF -------------------------------------------------------------------------------------------------------


def _pdf_literal(text: str) -> bytes:
    return b"(" + text.encode("latin-1").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def make_pdf(pages: list[list[str]] | tuple[list[str], ...], drawing: bool = False) -> bytes:
    """A minimal valid PDF, one list of text lines per page (ASCII lines in Helvetica, others in a CJK Type0 font).

    The CJK font is not embedded: it maps CIDs (= the BMP code points) through a ``ToUnicode`` CMap, which is what
    text extraction reads. ``drawing=True`` adds a filled rectangle to every page (a "scan" with no text).
    """
    cjk_chars = sorted({ch for page in pages for line in page if not line.isascii() for ch in line})
    cmap = "\n".join(f"<{ord(c):04X}> <{ord(c):04X}>" for c in cjk_chars)
    to_unicode = (
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /Test-UCS def /CMapType 2 def\n"
        "1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        f"{len(cjk_chars)} beginbfchar\n{cmap}\nendbfchar\nendcmap CMapName currentdict /CMap defineresource pop end end"
    ).encode()
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in below
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type0 /BaseFont /TestCJK /Encoding /Identity-H /DescendantFonts [5 0 R]"
        b" /ToUnicode 6 0 R >>",
        b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /TestCJK /CIDSystemInfo << /Registry (Adobe)"
        b" /Ordering (Identity) /Supplement 0 >> /FontDescriptor 7 0 R /DW 1000 /CIDToGIDMap /Identity >>",
        b"<< /Length %d >>\nstream\n" % len(to_unicode) + to_unicode + b"\nendstream",
        b"<< /Type /FontDescriptor /FontName /TestCJK /Flags 4 /FontBBox [0 -200 1000 900] /ItalicAngle 0"
        b" /Ascent 880 /Descent -120 /CapHeight 700 /StemV 80 >>",
    ]
    kids = []
    for lines in pages:
        ops = [b"0.5 g 50 50 400 600 re f"] if drawing else []
        y = 720
        for line in lines:
            if line.isascii():
                font, shown = b"/F1", _pdf_literal(line)
            else:
                font, shown = b"/F2", b"<" + "".join(f"{ord(c):04X}" for c in line).encode() + b">"
            ops.append(b"BT %s 12 Tf 72 %d Td %s Tj ET" % (font, y, shown))
            y -= 20
        content = b"\n".join(ops)
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
            b" /Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> >>" % len(objects)
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    return write_pdf_objects(objects)


def file_writer(folder: Path, expected: dict[str, str]) -> Callable[[str, bytes | str, str], None]:
    """``put(name, data, kind)``: write ``folder/name`` (str data as UTF-8) and record its expected outcome."""

    def put(name: str, data: bytes | str, kind: str) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        expected[name] = kind

    return put


def write_pdf_objects(objects: list[bytes]) -> bytes:
    """A PDF file from numbered object bodies (object 1 is the catalog), with a correct xref table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % off for off in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def encrypt_pdf(pdf: bytes, password: str) -> bytes:
    """A real password-protected copy of ``pdf`` (pypdf's writer, RC4-128, which needs no crypto package)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --- DOCX ------------------------------------------------------------------------------------------------------


def make_valid_docx() -> bytes:
    """A .docx with headings (one in a Chinese "标题 2" style), paragraphs, a 2x3 table and a content control."""
    import docx
    from docx.enum.style import WD_STYLE_TYPE
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    document = docx.Document()
    document.add_heading("Installation Guide", level=1)
    document.add_paragraph("Intro paragraph under the first heading.")
    document.add_heading("Drivers", level=2)
    document.add_paragraph("Install the printer driver first.")
    zh_style = document.styles.add_style("标题 2", WD_STYLE_TYPE.PARAGRAPH)
    document.add_paragraph("网络设置", style=zh_style)
    document.add_paragraph("先连接网络，再打开浏览器。")
    table = document.add_table(rows=2, cols=3)
    for row, values in zip(table.rows, (("名称", "版本", "备注"), ("驱动", "1.2", "必需")), strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    last = document.add_paragraph("After the table.")
    last._p.addnext(parse_xml(  # a content control, as Word templates wrap text
        f'<w:sdt {nsdecls("w")}><w:sdtContent><w:p><w:r><w:t>内容控件里的文字。</w:t></w:r></w:p></w:sdtContent></w:sdt>'
    ))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


XXE_DOCTYPE = '<!DOCTYPE w:document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
LAUGHS_DOCTYPE = "<!DOCTYPE w:document [" + "".join(
    [' <!ENTITY lol0 "lol">'] + [f' <!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
) + "]>"


def make_docx_with_doctype(doctype: str, entity_ref: str) -> bytes:
    """A valid .docx whose document.xml declares ``doctype`` and uses ``entity_ref`` inside a paragraph."""
    import docx

    document = docx.Document()
    document.add_paragraph("before ENTITY_HERE after")
    buffer = io.BytesIO()
    document.save(buffer)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "word/document.xml":
                head, sep, rest = data.decode("utf-8").partition("?>")
                data = (head + sep + doctype + rest).replace("ENTITY_HERE", entity_ref).encode("utf-8")
            dst.writestr(info.filename, data)
    return out.getvalue()


def make_zip_bomb(unpacked_mb: int = 120) -> bytes:
    """A .docx-shaped zip whose document.xml inflates ~1000x (``unpacked_mb`` MiB from ~120 KB)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with archive.open("word/document.xml", "w") as member:
            zeros = b"\0" * (1 << 20)
            for _ in range(unpacked_mb):
                member.write(zeros)
    return out.getvalue()


# --- HTML / Markdown -------------------------------------------------------------------------------------------

BILLION_LAUGHS_HTML = (
    '<?xml version="1.0"?>\n<!DOCTYPE html [\n'
    + "\n".join([' <!ENTITY lol0 "lol">'] + [f' <!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)])
    + "\n]>\n<html><head><title>Laughs</title></head><body><p>&lol9;</p><p>正文仍然可读。</p></body></html>\n"
)

XXE_HTML = (
    '<?xml version="1.0"?>\n<!DOCTYPE html [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    '<html xmlns="http://www.w3.org/1999/xhtml"><body><p>外部实体：&xxe;</p></body></html>\n'
)

VALID_HTML = """<!DOCTYPE html>
<html lang="zh"><head><meta charset="utf-8"><title>用户手册</title>
<style>body { color: red }</style><script>var secret = "SCRIPT_TEXT";</script></head>
<body>
<nav><a href="/">首页</a></nav>
<p>前言：这是手册的开头。</p>
<h2>安装</h2>
<p>第一步，下载
安装包。</p>
<h3>驱动</h3>
<ul><li>打印机驱动</li><li>网卡驱动</li></ul>
<table><tr><th>名称</th><th>版本</th></tr><tr><td>驱动</td><td>1.2</td></tr></table>
<noscript>NOSCRIPT_TEXT</noscript>
<h2>卸载</h2>
<div>删除程序<br>然后重启。</div>
</body></html>
"""

GBK_HTML = """<html><head><meta http-equiv="Content-Type" content="text/html; charset=gb2312">
<title>编码测试</title></head><body><h1>简体中文页面</h1><p>这个页面使用GB2312编码保存。</p></body></html>
"""

VALID_MARKDOWN = """---
title: 前置元数据
tags: [should, be, stripped]
---
Intro text before any heading.

# 用户指南

第一段文字。
同一段的第二行。

安装步骤
--------

```python
print("code kept")
```

| 名称 | 版本 |
| ---- | ---- |
| 驱动 | 1.2  |

- item one
- item two

1. first
2. second

## Setup

Setup **text** with `code`.

附录
====

最后一段。
"""
