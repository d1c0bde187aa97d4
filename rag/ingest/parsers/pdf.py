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
    documents = [Document(normalize_text(text, join_cjk=True), source, number, (), dict(metadata))
                 for number, text in enumerate(pages, start=1)]
    if cfg.ocr != "off":
        documents = _with_ocr(path, source, documents, cfg)
    documents = [document for document in documents if document.text]
    if not documents:
        if cfg.ocr == "off":
            raise LoadError("empty", "the PDF has no text layer (scanned?); set load.ocr=auto to read it with OCR")
        raise LoadError("empty", "the PDF has no text layer and no picture with text (load.ocr=force also reads "
                        "text drawn as shapes)")
    return documents


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






