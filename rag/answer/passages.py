"""Parent passages and edition dedup: match small chunks, hand the answer their section, one hit per text.

Why: on unseen documents the right file is usually in the top five but another chunk of it is first (docs/EVAL.md,
issue 15), and a 500-character chunk cuts an option list or a how-to in the middle. Bigger chunks at ingest help
but blur what the embedder and BM25 match (e5-small reads 512 tokens) and need a re-ingest. Here the chunks stay the
unit that is *matched*; after ranking, each hit's text becomes its **passage**: the chunk extended with the chunks
around it of the same Document (same file, page and heading path), overlaps removed, up to
``retrieve.passage_chars`` characters centred on the chunk and cut where a paragraph, line or sentence ends. It is
built at query time from the chunks the docstore already has, so no index is re-embedded.

Two hits whose passages overlap are two children of one parent: they collapse into the better-ranked hit (its
passage re-centred on both children when they fit the budget), which frees a top-k slot for another part of the
corpus. Two hits of *different* files whose passages hold nearly the same text (one manual as PDF and HTML) collapse
too: the better-ranked stays and names the other file in :attr:`Hit.also_in`.

The returned hit's chunk keeps the matched child's id, position, page and heading (deletes, syncs and citations
address the child); its ``text``, ``start`` and ``end`` are the passage's, a slice of the Document
(``text == document.text[start:end]``, except that whitespace the splitter trimmed between two chunks is rebuilt as
line breaks), so :func:`rag.answer.sentences.parent_text` and citations keep working.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from rag.answer.sentences import parent_text
from rag.core.types import Chunk, Hit

# Where a passage may start (the end of a match) or end (the start of a match), strongest first.
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n\s*")
_LINE = re.compile(r"\n\s*")
_SENTENCE = re.compile(r"(?:[。！？；!?;…]+|\.(?=\s))[”’\"」』）)]*\s*")
_TIERS = (_PARAGRAPH, _LINE, _SENTENCE)
SHINGLE = 5  # characters per shingle of the edition test
MIN_SHINGLES = 20  # a passage with fewer shingles (a title, a table scrap) is never called a duplicate
MAX_REACH = 12  # neighbouring positions fetched on each side of a hit at most
MAX_GAP = 4  # adjacent chunks of one Document this many characters apart (trimmed whitespace) still join

Neighbours = Callable[[Chunk, int], Sequence[Chunk]]


@dataclass
class _Parent:
    """One kept hit while passages are assembled: its Document text run and the span of its children in it."""

    hit: Hit
    run: str  # the text of the chunks around the child, overlaps removed
    run_start: int  # offset of run[0] in the Document
    core: tuple[int, int]  # Document offsets of the matched children (the child, or the union of collapsed ones)
    span: tuple[int, int]  # Document offsets of the passage
    also_in: list[str] = field(default_factory=list)  # other files holding the same text
    _shingles: tuple[tuple[int, int], set[str]] | None = None

    @property
    def text(self) -> str:
        return self.run[self.span[0] - self.run_start:self.span[1] - self.run_start]

    def shingles(self) -> set[str]:
        if self._shingles is None or self._shingles[0] != self.span:
            self._shingles = (self.span, shingles(self.text))
        return self._shingles[1]

    def result(self) -> Hit:
        chunk = replace(self.hit.chunk, text=self.text, start=self.span[0], end=self.span[1])
        also_in = tuple(dict.fromkeys(f for f in (*self.hit.also_in, *self.also_in) if f != chunk.source))
        return replace(self.hit, chunk=chunk, also_in=also_in)


def _start_cut(text: str, lo: int, hi: int) -> int:
    """The passage start in ``text[lo:hi]`` (``hi``: the child's start): the strongest boundary that keeps at least
    half of the room, else the boundary that keeps the most, else ``hi`` (no extension)."""
    if lo >= hi or lo == 0:  # nothing to add, or the run's start (a Document's start) is in reach
        return lo
    best: int | None = None
    for tier in _TIERS:
        found = next((m.end() for m in tier.finditer(text, lo, hi)), None)
        if found is None:
            continue
        if found - lo <= (hi - lo) / 2:
            return found
        best = found if best is None else min(best, found)
    return hi if best is None else best


def _end_cut(text: str, lo: int, hi: int) -> int:
    """The passage end in ``text[lo:hi]`` (``lo``: the child's end), mirroring :func:`_start_cut`."""
    if lo >= hi or hi == len(text):
        return hi
    best: int | None = None
    for tier in _TIERS:
        ends = [m.end() if tier is _SENTENCE else m.start() for m in tier.finditer(text, lo, hi)]
        found = max((e for e in ends if e > lo), default=None)
        if found is None:
            continue
        if hi - found <= (hi - lo) / 2:
            return found
        best = found if best is None else max(best, found)
    return lo if best is None else best


def passage_span(text: str, core_start: int, core_end: int, budget: int) -> tuple[int, int]:
    """The passage around ``text[core_start:core_end]``: up to ``budget`` characters, centred on the core (a side
    with less text before the run's edge gives its share to the other), cut at a paragraph, line or sentence
    boundary; never shorter than the core. Offsets into ``text``."""
    extra = budget - (core_end - core_start)
    if extra <= 0:
        return core_start, core_end
    left = min(core_start, extra // 2)
    right = min(len(text) - core_end, extra - left)
    left = min(core_start, extra - right)
    start = _start_cut(text, core_start - left, core_start)
    end = _end_cut(text, core_end, core_end + right)
    while start < core_start and text[start].isspace():
        start += 1
    while end > core_end and text[end - 1].isspace():
        end -= 1
    return start, end


def same_document(chunk: Chunk, other: Chunk) -> bool:
    """Chunks of one parsed Document: the same file, page and heading path (offsets count within a Document)."""
    return chunk.source == other.source and chunk.page == other.page and chunk.heading == other.heading


def reach_for(chunk: Chunk, budget: int) -> int:
    """How many positions on each side may hold text for a ``budget``-character passage around ``chunk`` (chunks
    advance by at least about half their length, given the splitter's overlap is under half a chunk)."""
    stride = max(50, len(chunk.text) // 2)
    return max(1, min(MAX_REACH, math.ceil(budget / 2 / stride) + 1))


def _parent(hit: Hit, neighbours: Sequence[Chunk], budget: int) -> _Parent:
    child = hit.chunk
    core = (child.start, child.end)
    if budget <= 0:
        return _Parent(hit, child.text, child.start, core, core)
    run, offset = parent_text(child, [c for c in neighbours if same_document(c, child)], MAX_GAP)
    run_start = child.start - offset
    start, end = passage_span(run, offset, offset + len(child.text), budget)
    return _Parent(hit, run, run_start, core, (run_start + start, run_start + end))


def _same_parent(a: _Parent, b: _Parent) -> bool:
    """The passages overlap in one Document (their texts agree on the overlap: a second Document with the same
    file, page and heading path has offsets of its own)."""
    if not same_document(a.hit.chunk, b.hit.chunk):
        return False
    lo, hi = max(a.span[0], b.span[0]), min(a.span[1], b.span[1])
    return lo < hi and a.run[lo - a.run_start:hi - a.run_start] == b.run[lo - b.run_start:hi - b.run_start]


def _absorb(kept: _Parent, other: _Parent, budget: int) -> bool:
    """Collapse ``other`` into ``kept`` when ``kept``'s passage holds ``other``'s child, re-centred on both children
    if needed and they fit the budget together; False (``other`` stays a hit of its own) when it cannot: dropping
    it would drop the part of its child that the better passage leaves out."""
    if kept.span[0] <= other.core[0] and other.core[1] <= kept.span[1]:
        return True
    core = (min(kept.core[0], other.core[0]), max(kept.core[1], other.core[1]))
    lo, hi = core[0] - kept.run_start, core[1] - kept.run_start
    if hi - lo > budget or lo < 0 or hi > len(kept.run):
        return False
    start, end = passage_span(kept.run, lo, hi, budget)
    kept.core = core
    kept.span = (kept.run_start + start, kept.run_start + end)
    return True


def assemble(hits: Sequence[Hit], neighbours: Neighbours, top_k: int, passage_chars: int,
             edition_similarity: float) -> list[Hit]:
    """The first ``top_k`` distinct hits, best first, each with its passage as the chunk text.

    Args:
        hits: ranked hits, best first (more than ``top_k``, so that collapsed ones can be replaced).
        neighbours: ``(chunk, reach) -> chunks`` of the same file up to ``reach`` positions away
            (:meth:`rag.index.reader.KnowledgeIndex.neighbours`).
        top_k: how many hits to return.
        passage_chars: the most characters of a passage (a longer chunk stays whole); 0 = the chunk itself, and
            children of one parent are not collapsed.
        edition_similarity: a hit of another file whose passage shares at least this share of shingles with a
            better-ranked one (:func:`text_similarity`) collapses into it; 0 = off.
    """
    kept: list[_Parent] = []
    for hit in hits:
        reach = reach_for(hit.chunk, passage_chars) if passage_chars > 0 else 0
        parent = _parent(hit, neighbours(hit.chunk, reach) if reach else [], passage_chars)
        if passage_chars > 0 and any(_same_parent(k, parent) and _absorb(k, parent, passage_chars) for k in kept):
            continue
        if edition_similarity > 0:
            edition = next((k for k in kept if k.hit.chunk.source != hit.chunk.source
                            and text_similarity(parent.shingles(), k.shingles()) >= edition_similarity), None)
            if edition is not None:
                edition.also_in.extend(f for f in (hit.chunk.source, *hit.also_in) if f not in edition.also_in)
                continue
        if len(kept) == top_k and edition_similarity > 0:
            _collapse_editions(kept, edition_similarity)  # passages grown by absorbing may now be editions
        if len(kept) == top_k:
            break
        kept.append(parent)
    if edition_similarity > 0:
        _collapse_editions(kept, edition_similarity)
    return [parent.result() for parent in kept]


def _collapse_editions(kept: list[_Parent], threshold: float) -> None:
    """Drop (in place) each kept passage that is an edition of a better-ranked one from another file, naming its
    file in the better one's ``also_in``. :func:`assemble` compares each new hit with the passages kept so far, but a
    kept passage can still grow (a later child of its parent re-centres it), and two passages that did not look
    alike when the second came may do so afterwards (seen on a manual in HTML and PDF editions)."""
    i = 1
    while i < len(kept):
        later = kept[i]
        twin = next((k for k in kept[:i] if k.hit.chunk.source != later.hit.chunk.source
                     and text_similarity(later.shingles(), k.shingles()) >= threshold), None)
        if twin is None:
            i += 1
            continue
        twin.also_in.extend(f for f in (later.hit.chunk.source, *later.hit.also_in, *later.also_in)
                            if f not in twin.also_in)
        del kept[i]


def shingles(text: str) -> set[str]:
    """Character 5-grams of ``text`` after NFKC, lower-casing and removing whitespace (so a PDF's line breaks and an
    HTML page's spacing of one sentence give the same shingles)."""
    flat = "".join(unicodedata.normalize("NFKC", text).lower().split())
    return {flat[i:i + SHINGLE] for i in range(len(flat) - SHINGLE + 1)}


def text_similarity(a: set[str], b: set[str]) -> float:
    """How much of the smaller shingle set the larger holds (1.0 = contained). Not Jaccard: two editions cut a
    passage at different places (an HTML section, a PDF page), so the same text sits inside passages of different
    lengths; a passage under ``MIN_SHINGLES`` shingles scores 0."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    if len(small) < MIN_SHINGLES:
        return 0.0
    return len(small & large) / len(small)
