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

import logging
from pathlib import Path

from rag.core.config import LoadConfig
from rag.core.errors import LoadError
from rag.core.types import Document
from rag.ingest.parsers.text import normalize_text

logger = logging.getLogger(__name__)


# --- PDF -------------------------------------------------------------------------------------------------------

ENCRYPTED_PDF = "the PDF is password-protected; remove the password and re-run"


def _pdf_pages_pdfium(path: Path) -> list[str]:
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
    engines = [("pypdfium2", _pdf_pages_pdfium), ("pypdf", _pdf_pages_pypdf)]
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
    documents = [document for document in documents if document.text]
    if not documents:
        raise LoadError("empty", "the PDF has no text layer (scanned?); OCR is not supported")
    return documents


# --- the long tail through unstructured (optional extra) ------------------------------------------------------






