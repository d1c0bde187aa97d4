"""The Markdown and HTML parsers behind :mod:`rag.ingest.load` (re-exported by :mod:`rag.ingest.parsers.pdf`).

Both are sectioned: one Document per heading section, ``heading`` = the path of headings above it. Both read
untrusted markup, so both are written against its worst cases: markdown-it's nesting limit (markers past it are
stripped first, or everything after them would vanish), and HTML nested deeper than Python's recursion limit
(walked with an explicit stack), with lxml's HTML parser (no DTD, no entity expansion, no network).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from rag.core.config import LoadConfig
from rag.core.types import Document
from rag.ingest.parsers.text import SPACES, Sections, collapse, decode_text

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
                paragraph.append(SPACES.sub(" ", str(node)))
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

