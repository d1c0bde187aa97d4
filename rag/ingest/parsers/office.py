"""The DOCX and PPTX parsers behind :mod:`rag.ingest.load`, and the zip-bomb check they (and xlsx) need.

A .docx/.pptx/.xlsx is a zip of XML parts: :func:`check_zip` refuses one that is not a zip or that would unpack to far more
than it could hold (declared sizes are enough) before python-docx / python-pptx opens it. DOCX headings come from
paragraph styles (Heading N / 标题 N / Title) or an outline level set by hand; tables become " | " lines. A slide is
one Document: its title is the heading, then its text frames, tables and speaker notes; ``page`` = slide number.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from rag.core.config import LoadConfig
from rag.core.errors import LoadError
from rag.core.types import Document
from rag.ingest.parsers.text import MIB, Sections, collapse, normalize_text

ZIP_BOMB_RATIO = 20  # a zip unpacking to more than this many times its size ...
ZIP_BOMB_MIN_MB = 100  # ... and to more than this many MB is refused

# body paragraphs and tables in document order, also those inside content controls (iter_inner_content skips them)
_DOCX_BLOCKS = "./w:p | ./w:tbl | ./w:sdt/w:sdtContent/w:p | ./w:sdt/w:sdtContent/w:tbl"
_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-9])$", re.I)


def check_zip(path: Path, cfg: LoadConfig) -> None:
    """Refuse a zip-based file (.docx, .pptx, .xlsx) that is not a zip, or that unpacks to far more than it could hold.

    Declared sizes are enough: Python's zipfile never inflates a member past its declared size.
    """
    suffix = path.suffix.lower()
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise LoadError("corrupt", f"the file is not a valid {suffix} (not a zip archive: {exc})") from None
    size = path.stat().st_size
    unpacked = sum(member.file_size for member in members)
    member_cap = (cfg.memory_mb if cfg.memory_mb > 0 else 4096) * MIB // 4  # XML trees take several times that
    biggest = max((member.file_size for member in members), default=0)
    if (unpacked > ZIP_BOMB_RATIO * size and unpacked > ZIP_BOMB_MIN_MB * MIB) or biggest > member_cap:
        raise LoadError("corrupt", f"looks like a zip bomb: {size / MIB:.1f} MB would unpack to "
                        f"{unpacked / MIB:.0f} MB; the file was skipped")


def _docx_heading_level(paragraph: Any) -> int | None:
    style = paragraph.style
    name = (style.name or "").strip() if style is not None else ""
    if name.lower() in ("title", "标题"):
        return 0
    match = _HEADING_STYLE.match(name)
    if match:
        return int(match.group(1))
    for element in (paragraph._p, style.element if style is not None else None):  # an outline level set by hand
        found = element.xpath("./w:pPr/w:outlineLvl/@w:val") if element is not None else []
        if found and found[0].isdigit() and int(found[0]) < 9:
            return int(found[0]) + 1
    return None


def _docx_table_lines(table: Any) -> str:
    lines = []
    for row in table.rows:
        seen: list[Any] = []
        cells = []
        for cell in row.cells:  # a merged cell repeats: keep it once
            if not any(cell._tc is other for other in seen):
                seen.append(cell._tc)
                cells.append(collapse(cell.text))
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)


def parse_docx(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """.docx via python-docx after a zip-bomb check.

    python-docx parses XML with ``resolve_entities=False`` (no XXE, no entity expansion; libxml2 also refuses
    entity amplification), so no defusedxml is needed; tests/integration/test_load.py checks both.
    Heading N / 标题 N / Title styles (or an outline level) build the heading path; tables become " | " lines.
    """
    check_zip(path, cfg)
    import docx
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(str(path))
    sections = Sections(source, {"parser": "python-docx"})
    container = document._body  # gives the blocks their part (styles)
    for element in document.element.body.xpath(_DOCX_BLOCKS):
        if element.tag == qn("w:tbl"):
            sections.add(_docx_table_lines(Table(element, container)))
            continue
        paragraph = Paragraph(element, container)
        level = _docx_heading_level(paragraph)
        if level is None:
            sections.add(paragraph.text)
        else:
            sections.heading(level, paragraph.text)
    return sections.finish()



def _pptx_shape_blocks(shape: Any) -> list[str]:
    """Text of one shape in reading order: a text frame's paragraphs, a table's rows, a group's members."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
        return [block for member in shape.shapes for block in _pptx_shape_blocks(member)]
    if getattr(shape, "has_table", False) and shape.has_table:
        rows = [" | ".join(collapse(cell.text) for cell in row.cells) for row in shape.table.rows]
        return ["\n".join(row for row in rows if row.strip(" |"))]
    if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
        return ["\n".join(collapse(paragraph.text) for paragraph in shape.text_frame.paragraphs)]
    return []


def parse_pptx(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """.pptx via python-pptx after a zip-bomb check: one Document per slide (``page`` = slide number), the slide title as
    its heading, then text frames and tables (top to bottom, left to right) and the speaker notes.

    python-pptx parses XML with ``resolve_entities=False``, like python-docx (no XXE).
    """
    check_zip(path, cfg)
    import pptx

    presentation = pptx.Presentation(str(path))
    metadata = {"parser": "python-pptx", "page_count": str(len(presentation.slides))}
    documents = []
    for number, slide in enumerate(presentation.slides, start=1):
        title_shape = slide.shapes.title
        title = collapse(title_shape.text_frame.text) if title_shape is not None and title_shape.has_text_frame else ""
        shapes = [shape for shape in slide.shapes if title_shape is None or shape.shape_id != title_shape.shape_id]
        shapes.sort(key=lambda shape: ((shape.top or 0), (shape.left or 0)))
        blocks = [block for shape in shapes for block in _pptx_shape_blocks(shape)]
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            blocks.append(slide.notes_slide.notes_text_frame.text)
        text = normalize_text("\n\n".join(block for block in blocks if block.strip()))
        if text or title:
            documents.append(Document(text or title, source, number, (title,) if title else (), dict(metadata)))
    return documents
