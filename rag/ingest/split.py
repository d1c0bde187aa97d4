"""Document -> list[Chunk]: Chinese-aware recursive splitting that keeps character offsets.

LangChain's ``RecursiveCharacterTextSplitter`` returns strings and loses where they came from, so this is our own,
working on offsets only. Each chunk ends at the strongest boundary that fits in ``chunk_size`` characters:

    blank line  >  line end  >  sentence end (。！？；!?; and ". ", with closing quotes/brackets)
                >  clause mark (，、,：:)  >  space between words  >  any character (not inside a word)

which is what a recursive splitter with greedy merging produces. Punctuation stays at the end of the piece it closes
(``。`` stays on its sentence). English words and URL-like runs are never cut unless one alone is longer than
``chunk_size``. The next chunk starts up to ``chunk_overlap`` characters back, on a sentence / clause / word boundary
when there is one. Every search looks at a window of O(chunk_size) characters, so splitting is linear in the text
length and a 50 MB single line costs no more memory than its spans.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence

from rag.core.config import SplitConfig
from rag.core.errors import ConfigError
from rag.core.types import Chunk, Document, chunk_id

logger = logging.getLogger(__name__)

_CLOSERS = "[" + re.escape("”’\"'」』）)】］]》〉") + "]"  # closing quotes/brackets stay with the sentence end
# (pattern, is_whitespace): a whitespace separator may be cut anywhere inside (trimming removes it); a punctuation
# separator is cut right after its last character, so it stays with the piece it closes.
_PARAGRAPH = (re.compile(r"\n[^\S\n]*\n"), True)
_LINE = (re.compile(r"\n"), True)
# "." ends a sentence only before whitespace ("3.14" does not); matched once per run of dots, never backtracked.
_SENTENCE = (re.compile(rf"(?:[。｡！？；!?;…]+|(?<!\.)\.++(?={_CLOSERS}*(?:\s|\Z))){_CLOSERS}*"), False)
_CLAUSE = (re.compile(r"[，、,：:]"), False)
_SPACE = (re.compile(r"\s+"), True)
_LEVELS = (_PARAGRAPH, _LINE, _SENTENCE, _CLAUSE, _SPACE)
# Where the overlap may start, best first; within a tier the earliest boundary wins (the most whole context).
_OVERLAP_TIERS = ((_PARAGRAPH, _LINE, _SENTENCE), (_CLAUSE,), (_SPACE,))
_LOOKAHEAD = 8  # characters past a window that a separator match may need to see (". " at the window's end)

# A word: letters/digits, optionally joined into URL-like runs ("example.com/a?b=1", "12:30", "1,000", "don't").
_ALNUM = r"A-Za-z0-9_\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u0370-\u03ff\u0400-\u04ff"
_JOINERS = r"\-.:/?#&=%+~@',"
_WORD = re.compile(rf"[{_ALNUM}]+(?:[{_JOINERS}]+[{_ALNUM}]+)*")
_ALNUM_RUN = re.compile(rf"[{_ALNUM}]+")
_WORD_PAIR = re.compile(rf"[{_ALNUM}{_JOINERS}]{{2}}")  # a cut between these two characters may split a word
_NON_SPACE = re.compile(r"\S")

Level = tuple[re.Pattern[str], bool]


def _check(chunk_size: int, chunk_overlap: int) -> None:
    if chunk_size < 1:
        raise ConfigError(f"split.chunk_size={chunk_size} must be at least 1, e.g. split.chunk_size=500")
    if chunk_overlap < 0:
        raise ConfigError(f"split.chunk_overlap={chunk_overlap} must be 0 or more, e.g. split.chunk_overlap=50")
    if chunk_overlap >= chunk_size:
        raise ConfigError(f"split.chunk_overlap={chunk_overlap} must be smaller than split.chunk_size={chunk_size}")


def _skip_space(text: str, pos: int) -> int:
    """The first non-whitespace offset at or after ``pos`` (``len(text)`` if none)."""
    match = _NON_SPACE.search(text, pos)
    return match.start() if match else len(text)


class _Words:
    """The words that cuts near one window (lo, hi] must not fall strictly inside.

    A URL-like run of at most ``chunk_size`` characters is kept whole; a longer one may be cut at its punctuation
    but not inside its letter/digit runs of at most ``chunk_size``; a longer run still may be cut anywhere. Found
    only when a cut falls between two word characters (CJK text and cuts at spaces never need them). The scan starts
    ``chunk_size + 1`` before ``lo`` and ends as far past ``hi``, so every word that can be protected is seen whole,
    and a word seen only in part is longer than ``chunk_size``.
    """

    def __init__(self, text: str, lo: int, hi: int, chunk_size: int) -> None:
        self.text, self.lo, self.hi, self.chunk_size = text, lo, hi, chunk_size
        self._spans: tuple[list[int], list[int]] | None = None  # starts, ends: ascending and disjoint

    def around(self, pos: int) -> tuple[int, int] | None:
        """The (start, end) of the protected word that ``pos`` falls strictly inside, or None."""
        if pos < 1 or _WORD_PAIR.match(self.text, pos - 1) is None:
            return None
        if self._spans is None:
            self._spans = self._find()
        starts, ends = self._spans
        i = bisect_right(starts, pos) - 1
        return (starts[i], ends[i]) if i >= 0 and starts[i] < pos < ends[i] else None

    def _find(self) -> tuple[list[int], list[int]]:
        text, lo, hi, size = self.text, self.lo, self.hi, self.chunk_size
        starts: list[int] = []
        ends: list[int] = []
        for word in _WORD.finditer(text, max(0, lo - size - 1), min(len(text), hi + size + 1)):
            if word.start() >= hi:
                break
            if word.end() <= lo:
                continue
            runs = [word] if word.end() - word.start() <= size else _ALNUM_RUN.finditer(text, word.start(), word.end())
            for run in runs:
                if lo < run.end() and run.start() < hi and run.end() - run.start() <= size:
                    starts.append(run.start())
                    ends.append(run.end())
        return starts, ends


def _cuts(text: str, level: Level, lo: int, hi: int, words: _Words) -> Iterator[int]:
    """Ascending cut offsets p with lo < p <= hi that this separator level offers, none inside a protected word."""
    pattern, is_whitespace = level
    for match in pattern.finditer(text, lo, min(len(text), hi + _LOOKAHEAD)):
        if match.start() > hi:
            return
        cut = min(match.end(), hi) if is_whitespace else match.end()
        if cut > hi:
            return
        if cut > lo and words.around(cut) is None:
            yield cut


def _chunk_end(text: str, lo: int, hi: int, chunk_size: int) -> int | None:
    """The best cut in (lo, hi]: the last one of the strongest level; None if only a cut inside a word fits."""
    if hi >= len(text):
        return len(text)
    words = _Words(text, lo, hi, chunk_size)
    for level in _LEVELS:
        best = max(_cuts(text, level, lo, hi, words), default=None)  # cuts ascend: the last that fits
        if best is not None:
            return best
    word = words.around(hi)  # characters: cut at the window's end, or before the word it would split
    cut = hi if word is None else word[0]
    return cut if cut > lo else None


def _overlap_start(text: str, start: int, end: int, chunk_overlap: int, chunk_size: int) -> int:
    """Where the chunk after [start, end) begins: up to ``chunk_overlap`` back, on the best boundary there."""
    first = max(end - chunk_overlap, start + 1)
    if first >= end:
        return end
    words = _Words(text, first - 1, end - 1, chunk_size)
    for tier in _OVERLAP_TIERS:
        cuts = [cut for level in tier for cut in _cuts(text, level, first - 1, end - 1, words)]
        if cuts:
            return min(cuts)
    word = words.around(first)  # characters: move forward out of a word rather than start inside it
    return first if word is None else min(word[1], end)


def split_spans(text: str, chunk_size: int, chunk_overlap: int) -> list[tuple[int, int]]:
    """Split ``text`` into overlapping chunks on the strongest boundaries that fit, as offsets.

    Args:
        text: the text to split.
        chunk_size: the most characters a chunk may hold (>= 1).
        chunk_overlap: the most characters two consecutive chunks may share (0 <= overlap < chunk_size).

    Returns:
        ``(start, end)`` spans, ascending, each ``0 < end - start <= chunk_size``, trimmed of whitespace at both
        ends, together covering every non-whitespace character of ``text``.

    Raises:
        ConfigError: if the sizes are out of range.
    """
    _check(chunk_size, chunk_overlap)
    n = len(text)
    spans: list[tuple[int, int]] = []
    start = lo = _skip_space(text, 0)  # lo: the chunk must end after here (past the previous chunk's end)
    while lo < n:
        end = _chunk_end(text, lo, start + chunk_size, chunk_size)
        if end is None and start < lo:  # the overlap left no room for the next word: drop the overlap
            start = lo
            end = _chunk_end(text, lo, start + chunk_size, chunk_size)
        if end is None:  # a single word longer than chunk_size: hard cut
            end = start + chunk_size
        # start and lo are non-whitespace and lo < end, so the chunk has content; trim its trailing whitespace.
        content_end = start + len(text[start:end].rstrip())
        spans.append((start, content_end))
        lo = _skip_space(text, end)
        if lo >= n:
            break
        next_start = _skip_space(text, _overlap_start(text, start, content_end, chunk_overlap, chunk_size))
        start = next_start if lo - next_start < chunk_size else lo  # the next window must reach past lo
    return spans


def split_documents(docs: Sequence[Document], cfg: SplitConfig, file_sha256: str) -> list[Chunk]:
    """Split all Documents of one file, in order, into Chunks numbered 0..n-1 across the file.

    Args:
        docs: the file's Documents (pages or sections), all with the same ``source``.
        cfg: chunk size, overlap and the fewest non-whitespace characters a kept chunk needs.
        file_sha256: the file's content hash; with the source and position it makes the stable chunk id.

    Returns:
        Chunks with ``text == doc.text[start:end]`` of their Document, and its page and heading.

    Raises:
        ConfigError: if the split settings are out of range.
        ValueError: if the Documents come from more than one file.
    """
    _check(cfg.chunk_size, cfg.chunk_overlap)
    sources = {doc.source for doc in docs}
    if len(sources) > 1:
        raise ValueError(f"split_documents got Documents of several files {sorted(sources)}; call it once per file")
    chunks: list[Chunk] = []
    for doc in docs:
        for start, end in split_spans(doc.text, cfg.chunk_size, cfg.chunk_overlap):
            text = doc.text[start:end]
            if len("".join(text.split())) < cfg.min_chunk_chars:
                continue
            position = len(chunks)
            chunks.append(
                Chunk(
                    id=chunk_id(doc.source, file_sha256, position),
                    text=text,
                    source=doc.source,
                    position=position,
                    page=doc.page,
                    heading=doc.heading,
                    start=start,
                    end=end,
                )
            )
    if docs:
        logger.debug("split %s: %d documents -> %d chunks", docs[0].source, len(docs), len(chunks))
    return chunks


def embedding_text(chunk: Chunk) -> str:
    """The text embedded and BM25-indexed for a chunk: its heading path (``A > B``) on a first line, then its text."""
    heading = " > ".join(" ".join(part.split()) for part in chunk.heading if part.strip())
    return f"{heading}\n{chunk.text}" if heading else chunk.text
