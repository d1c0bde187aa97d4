"""Shared text handling of the format parsers (:mod:`rag.ingest.parsers.pdf`), and the plain-text parser built on it.

Every parser ends in the same place: decoded text (:func:`decode_text`: BOM, UTF-8, then a detected encoding),
normalised (:func:`normalize_text`, :func:`collapse`) and cut into heading sections (:class:`Sections`). Those
pieces are here, with :func:`parse_text`, which is nothing but them; the parsers of structured formats live in
:mod:`rag.ingest.parsers.markup` (Markdown, HTML), :mod:`rag.ingest.parsers.office` (DOCX) and :mod:`rag.ingest.parsers.pdf` (PDF, the rest).
"""

from __future__ import annotations

import codecs
import logging
import re
from pathlib import Path

from rag.core.config import LoadConfig
from rag.core.errors import LoadError
from rag.core.types import Document

logger = logging.getLogger(__name__)

MIB = 1 << 20
# Han, kana, CJK punctuation and full-width forms: scripts written without spaces between words (not Hangul).
_CJK = "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u31c0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_CJK_GAP = re.compile(f"(?<=[{_CJK}])[ \t]+(?=[{_CJK}])")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufeff\ud800-\udfff]")  # keeps \t \n \v \f \r (turned into \n)
_BLANK_LINES = re.compile(r"\n{3,}")
SPACES = re.compile(r"\s+")
_BOMS = (  # utf-32 first: its little-endian BOM starts with utf-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_GB_FAMILY = {"gbk", "gb2312", "hz", "gb18030"}  # GB18030 is a superset of all of them


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
    return _CJK_GAP.sub("", SPACES.sub(" ", text)).strip()


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

