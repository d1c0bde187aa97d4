"""PDF parsing (pypdfium2, pypdf as the fallback). The parsers of :mod:`rag.ingest.parsers`, behind :mod:`rag.ingest.load`: one file on disk -> list of :class:`~rag.core.types.Document`.

Each ``parse_*`` function takes ``(path, source, cfg)`` and raises :class:`~rag.core.errors.LoadError` for a file it
cannot use. Parser libraries are imported inside the functions, so a worker process only loads what it needs.
Sectioned formats (HTML, Markdown, DOCX) give one Document per heading section, with ``heading`` = the path of
headings above it; the heading line itself is in ``heading``, not repeated in ``text``.

The shared text handling and the plain-text parser are in :mod:`rag.ingest.parsers.text`, Markdown and HTML in
:mod:`rag.ingest.parsers.markup`, DOCX in :mod:`rag.ingest.parsers.office`, the ``unstructured`` long tail in
:mod:`rag.ingest.parsers.unstructured`; :mod:`rag.ingest.load` maps file suffixes to them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from rag.core.config import LoadConfig
from rag.core.errors import LoadError
from rag.core.types import Document
from rag.ingest.parsers.ocr import OCR_PARSER, OcrText, ocr_document, ocr_image, owned_rgb, run_in_order
from rag.ingest.parsers.text import normalize_text

logger = logging.getLogger(__name__)


# --- PDF -------------------------------------------------------------------------------------------------------

ENCRYPTED_PDF = "the PDF is password-protected; remove the password and re-run"
MAX_RENDER_PIXELS = 40_000_000  # a page rendered for OCR (A4 at 200 dpi: 3.9 M); bigger pictures are left out
MIN_PICTURE_PX = 64  # pictures narrower than this (or under a quarter of it high) hold no readable line


def pdf_pages_pdfium(path: Path) -> list[str]:  # public: bench/parse.py times it as the raw-extraction baseline
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        if exc.err_code == pdfium_c.FPDF_ERR_PASSWORD:
            raise LoadError("encrypted", ENCRYPTED_PDF) from None
        raise
    try:
        pages = []
        for index in range(len(pdf)):
            page = pdf[index]
            textpage = page.get_textpage()
            pages.append(textpage.get_text_bounded())
            textpage.close()
            page.close()
        return pages
    finally:
        pdf.close()


def _pdf_pages_pypdf(path: Path) -> list[str]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    if reader.is_encrypted and not reader.decrypt(""):  # an empty user password opens "owner-only" PDFs
        raise LoadError("encrypted", ENCRYPTED_PDF)
    return [page.extract_text() or "" for page in reader.pages]


def parse_pdf(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """PDF: one Document per page with text (``page`` 1-based), cfg.pdf_engine first, the other as fallback.

    ``metadata["page_count"]`` holds the number of pages, blank ones included.
    """
    engines = [("pypdfium2", pdf_pages_pdfium), ("pypdf", _pdf_pages_pypdf)]
    if cfg.pdf_engine == "pypdf":
        engines.reverse()
    failures = []
    for name, extract in engines:
        try:
            pages = extract(path)
            break
        except LoadError:
            raise
        except Exception as exc:  # a damaged file: the other engine may still read it
            logger.debug("%s could not open %s: %s", name, source, exc)
            failures.append(f"{name}: {type(exc).__name__}: {str(exc).strip()}")
    else:
        raise LoadError("corrupt", "the file is not a readable PDF (" + "; ".join(failures) + ")")
    if not pages:
        raise LoadError("corrupt", "the PDF has no pages")
    metadata = {"parser": name, "page_count": str(len(pages))}
    pages, titles = strip_running_lines([normalize_text(text, join_cjk=True) for text in pages])
    # a running head says what the page is in (the manual's title): it opens the page once, without its page counter,
    # a line retrieval reads and the answer takes for a heading (a page heading would make every passage of the manual
    # "about" the names in its title, which lets a question that only shares those names be answered)
    documents = [Document(f"{title}\n{text}" if title and text else text, source, number, (), dict(metadata))
                 for number, (text, title) in enumerate(zip(pages, titles, strict=True), start=1)]
    if cfg.ocr != "off":
        documents = _with_ocr(path, source, documents, cfg)
    documents = [document for document in documents if document.text]
    if not documents:
        if cfg.ocr == "off":
            raise LoadError("empty", "the PDF has no text layer (scanned?); set load.ocr=auto to read it with OCR")
        raise LoadError("empty", "the PDF has no text layer and no picture with text (load.ocr=force also reads "
                        "text drawn as shapes)")
    return documents


_CHINESE_PAGE = r"第\s*\d{1,4}\s*页(?:\s*[/,，]?\s*共\s*\d{1,4}\s*页)?"  # "第 3 页", "第 3 页 共 10 页"
# a line that is only a page number: "12", "- 12 -", "12 / 92", "Page 3 of 10", "第 3 页"
_PAGE_NUMBER = re.compile(r"[\W_]*(?:page\s*)?\d{1,4}(?:\s*(?:/|of|-)\s*\d{1,4})?[\W_]*|" + _CHINESE_PAGE, re.IGNORECASE)
# a page counter at the start or end of a running head: "11 / 92", "Page 3 of 10", "第 3 页", "12"
_COUNTER = re.compile(r"(?:^|\s)(?:page\s*)?\d{1,4}(?:\s*(?:/|of)\s*\d{1,4})?\s*$|^\s*\d{1,4}(?:\s*(?:/|of)\s*\d{1,4})?\s|"
                      + _CHINESE_PAGE, re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
RUNNING_EDGE_LINES = 2  # a page's first and last lines that may be a running head or foot
RUNNING_MIN_PAGES = 3  # a line repeated at the edge of at least this many pages ...
# ... and this share of the pages with text is a running head or foot (a book's title on every other page is one; a
# table's header row repeated where the table crosses a page, or "Chapter 3" atop a chapter's first page, is not)
RUNNING_MIN_SHARE = 0.4


def strip_running_lines(pages: list[str]) -> tuple[list[str], list[str]]:
    """(``pages`` without their running heads and feet and page numbers, each page's running title): a line
    among the first or last :data:`RUNNING_EDGE_LINES` of a page that stands at the edge of enough pages, the same
    text each time or with a number that counts the pages ("Debian Edu / Skolelinux 12 Bookworm 手册 11 / 92" atop
    every page of that manual), or that is a page number alone (in a document of more than one page). Such lines say
    nothing a question asks about, and left in they become answer sentences or cut a paragraph that runs on from the
    previous page. A line whose numbers change otherwise ("Step 3", "Total: 42") is content, and stays. A page's
    running title is the first running line taken out of it, without its page counter ("Debian Edu / Skolelinux 12
    Bookworm 手册"), or "" (``pages``: normalised text, one per page)."""

    def edges(lines: list[str]) -> list[int]:
        filled = [i for i, line in enumerate(lines) if line.strip()]
        return sorted(set(filled[:RUNNING_EDGE_LINES] + filled[-RUNNING_EDGE_LINES:]))

    def shape(line: str) -> str:
        """The line with its spaces squeezed and its numbers as #, lower case: what repeats from page to page."""
        return _DIGITS.sub("#", " ".join(line.split())).lower()

    split = [page.split("\n") for page in pages]
    edge_lines = [edges(lines) for lines in split]
    with_text = sum(1 for page in pages if page.strip())
    # per line shape: the pages whose edge it is on, and its numbers there
    seen: dict[str, dict[int, list[int]]] = {}
    for number, (lines, at) in enumerate(zip(split, edge_lines, strict=True)):
        for i in at:
            seen.setdefault(shape(lines[i]), {}).setdefault(number, [int(d) for d in _DIGITS.findall(lines[i])])
    needed = max(RUNNING_MIN_PAGES, RUNNING_MIN_SHARE * with_text)

    def counts_pages(found: dict[int, list[int]]) -> bool:
        """The same numbers on every page, or one of them the page's number plus a fixed offset on most of them."""
        rows = [(page, values) for page, values in found.items() if len(values) < 16]
        if not rows:
            return False
        if all(values == rows[0][1] for _, values in rows):
            return True
        for j in range(len(rows[0][1])):
            offsets: dict[int, int] = {}
            for page, values in rows:
                offsets[values[j] - page] = offsets.get(values[j] - page, 0) + 1
            if max(offsets.values()) >= max(needed, 0.8 * len(rows)):
                return True
        return False

    running = {key for key, found in seen.items() if len(found) >= needed and counts_pages(found)}
    out, titles = [], []
    for lines, at in zip(split, edge_lines, strict=True):
        heads = [i for i in at if shape(lines[i]) in running]
        drop = set(heads) | {i for i in at if with_text > 1 and _PAGE_NUMBER.fullmatch(lines[i].strip())}
        out.append(normalize_text("\n".join(line for i, line in enumerate(lines) if i not in drop)) if drop
                   else "\n".join(lines))
        titles.append(next((title for i in heads if not _PAGE_NUMBER.fullmatch(lines[i].strip())
                            and (title := _COUNTER.sub("", " ".join(lines[i].split())).strip(" -–—|·,，"))), ""))
    return out, titles


def _with_ocr(path: Path, source: str, documents: list[Document], cfg: LoadConfig) -> list[Document]:
    """OCR the pages that need it: with ``force`` every page (its text layer replaced); with ``auto`` the pages with
    fewer than ``load.ocr_min_page_chars`` characters that hold a picture (a scan), and the pictures on the other
    pages (their text becomes a Document of its own on the same page), at most ``load.ocr_pictures_per_file`` of them
    per file, in page order. Pages are rendered at ``load.ocr_dpi``, here, one at a time, and OCR'd by
    ``load.ocr_threads`` threads (:func:`~rag.ingest.parsers.ocr.run_in_order`): page order is kept, and only a few
    rendered pages wait in memory."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    try:  # closing(): a failed page stops the jobs generator at once, so its open page closes before the document
        with contextlib.closing(_page_jobs(pdf, source, documents, cfg)) as jobs:
            return [document for page in run_in_order(jobs, cfg.ocr_threads) for document in page]
    finally:
        pdf.close()


def _page_jobs(pdf: Any, source: str, documents: list[Document],
               cfg: LoadConfig) -> Generator[Callable[[], list[Document]], None, None]:
    """For each page, what gives its Documents: the text layer as it is, or OCR of its render or of its pictures.

    Everything pdfium does (render, decode) happens here, in the caller's thread; the jobs only hold owned arrays.
    """
    metadata = {"parser": "pypdfium2+" + OCR_PARSER, "page_count": str(len(documents))}
    pictures_left = cfg.ocr_pictures_per_file
    for index, document in enumerate(documents):
        page = pdf[index]
        try:
            objects = _readable_pictures(page)
            few_chars = len("".join(document.text.split())) < cfg.ocr_min_page_chars
            if cfg.ocr == "force" or (few_chars and objects):  # a blank or drawing-only page loads no model
                width, height = page.get_size()  # points: a huge page is rendered smaller, not out of memory
                scale = min(cfg.ocr_dpi / 72, (MAX_RENDER_PIXELS / max(width * height, 1.0)) ** 0.5)
                image = owned_rgb(page.render(scale=scale).to_pil())
                yield functools.partial(_ocr_page, image, source, index + 1, cfg, metadata)
                continue
            if pictures_left <= 0 or not objects:
                yield functools.partial(list, [document])
                continue
            objects = objects[:pictures_left]
            pictures_left -= len(objects)
            if pictures_left <= 0:
                logger.info("%s: OCR'd %d pictures inside text pages (load.ocr_pictures_per_file); the rest are "
                            "not read", source, cfg.ocr_pictures_per_file)
            images = [owned_rgb(picture) for picture in _decoded(objects)]
            yield functools.partial(_ocr_pictures, document, images, source, index + 1, cfg, metadata)
        finally:
            page.close()


def _ocr_page(image: Any, source: str, page: int, cfg: LoadConfig, metadata: dict[str, str]) -> list[Document]:
    return [ocr_document(ocr_image(image, cfg), source, page, "page", metadata)]


def _ocr_pictures(document: Document, images: list[Any], source: str, page: int, cfg: LoadConfig,
                  metadata: dict[str, str]) -> list[Document]:
    """The page's text layer, then one Document of the text read in its pictures (if any)."""
    pictures = [result for result in (ocr_image(image, cfg) for image in images) if result.text]
    if not pictures:
        return [document]
    weight = sum(len(result.text) for result in pictures)
    confidence = sum(len(result.text) * result.confidence for result in pictures) / weight
    joined = OcrText("\n\n".join(result.text for result in pictures), confidence,
                     sum(result.dropped_lines for result in pictures))
    return [document, ocr_document(joined, source, page, "pictures", metadata)]


def _readable_pictures(page: Any) -> list[Any]:
    """The image objects on a PDF page big enough to hold a line of text, and not too big to decode."""
    import pypdfium2.raw as pdfium_c

    found = []
    for image in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=3):
        width, height = image.get_px_size()
        if width >= MIN_PICTURE_PX and height >= MIN_PICTURE_PX // 4 and width * height <= MAX_RENDER_PIXELS:
            found.append(image)
    return found


def _decoded(objects: list[Any]) -> list[Any]:
    """PDF image objects as PIL images (those pdfium cannot decode are left out)."""
    pictures = []
    for image in objects:
        try:
            pictures.append(image.get_bitmap(render=False).to_pil())
        except Exception as exc:  # an image filter pdfium cannot decode: the page's text still counts
            logger.debug("cannot decode a picture: %s", exc)
    return pictures


# --- the long tail through unstructured (optional extra) ------------------------------------------------------






