"""Citations: parse ``[n]`` markers in an answer and check each against the chunk it points at.

An answer cites passage n of its prompt as ``[n]`` (also ``[1, 2]``, ``[1][2]``, ``[1-3]``, full-width ``【1】`` and
``［1］``). A marker is kept only when n is one of the prompt's hits and the sentence carrying it is *supported* by
that hit's chunk: the share of the sentence's content units (character bigrams of CJK runs, lower-cased words
elsewhere; punctuation, stopwords and markers ignored) that also occur in the chunk is at least ``min_overlap``.
Numbers a document injected (a passage saying "[9]") point nowhere, since only the prompt's hits are valid. Bracketed
numbers of four or more digits (``[2024]``) are not markers and stay in the text.

Overlap alone is not support: a sentence that copies the official passage but swaps in another host name would
share most of its words. So the sentence's *specifics* (numbers, host names, e-mail addresses, URLs, paths, names
written in mixed case or with digits, text in 《》 or quotes) must each occur in the cited passage; a sentence with
a specific that none of its cited passages holds is unsupported, and with ``drop_unsupported`` it is removed from
the answer altogether (its claim would otherwise stand, merely uncited).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from rag.answer.sentences import false_end
from rag.core.types import Chunk, Citation, Hit
from rag.index.bm25 import STOPWORDS

_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[^\W_]+")  # applied after CJK runs are blanked out
_LIST_SEP = r"\s*[,，、;；]\s*"
_RANGE_SEP = r"\s*[-–~～]\s*"
# group 1: the numbers inside the brackets, e.g. "1, 2" or "1-3"
MARKER = re.compile(rf"[\[［【]\s*(\d{{1,3}}(?:(?:{_LIST_SEP}|{_RANGE_SEP})\d{{1,3}})*)\s*[\]］】]")
MAX_RANGE = 20  # [1-3] expands; a wider "range" like [1-999] keeps only its two ends
# A sentence ends at CJK/ASCII terminal punctuation (a "." only before a space, the end or a marker) or a newline;
# closing quotes and the citation markers right after the punctuation stay with the sentence they follow.
_TERMINAL = re.compile(r"[。！？!?；;…]+|\.(?=\s|$|[\[［【])|\n")
_SPECIFIC = re.compile(
    r"https?://[^\s\[\](),<>，。；]+"  # URLs
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # e-mail addresses
    r"|(?<![\w/])(?:[A-Za-z0-9][\w-]*\.)+[A-Za-z][\w-]*"  # host and file names: vpn.xinghe.example, manifest.json
    r"|(?:[A-Za-z]:\\|~?/)[\w./\\-]+"  # paths
    r"|\d+(?:[.:/]\d+)*"  # numbers, versions, times, addresses: 30, 4.3.1, 9:30, 10.8.0.1
    r"|\b(?=[A-Za-z]*[A-Z][a-z]*[A-Z0-9])[A-Za-z][A-Za-z0-9-]*"  # WireGuard, VPN, AX2-100
    r"|《[^》]{1,40}》|“[^”]{1,40}”|\"[^\"]{1,40}\"")  # titles and quoted names
_LIST_NUMBER = re.compile(r"(?m)^\s*\d{1,2}[.)、]\s")
_TRAILER = re.compile(rf"[”’\"」』）)]*(?:[ \t]*{MARKER.pattern})*")


class Marker(NamedTuple):
    """One cited number; ``start:end`` is the span of the whole bracket it was written in."""

    number: int
    start: int
    end: int


@dataclass(frozen=True)
class Verified:
    """The answer after verification.

    Attributes:
        text: the answer with out-of-range (and, when dropping, unsupported) numbers removed and every kept marker
            rewritten as ASCII ``[n]`` (``【1】`` -> ``[1]``, ``[1, 2]`` -> ``[1][2]``).
        citations: one Citation per kept number, in order of first use; ``supported`` is False when any sentence
            citing it is unsupported (only possible with ``drop_unsupported=False``).
        quotes: number -> the sentence of the cited chunk that best supports the answer (for highlighting).
        removed: numbers removed from the text, in order (out of range, or unsupported when dropping).
        dropped: sentences removed from the text (when dropping) because a specific they state (a host, a number,
            a name) is in none of the passages they cite.
    """

    text: str
    citations: list[Citation]
    quotes: dict[int, str]
    removed: list[int]
    dropped: list[str] = field(default_factory=list)


def _numbers(spec: str) -> list[int]:
    numbers: list[int] = []
    for part in re.split(_LIST_SEP, spec):
        bounds = [int(b) for b in re.split(_RANGE_SEP, part)]
        if len(bounds) == 2 and 0 < bounds[1] - bounds[0] < MAX_RANGE:
            numbers.extend(range(bounds[0], bounds[1] + 1))
        else:
            numbers.extend(bounds)
    return list(dict.fromkeys(numbers))


def parse_citations(text: str) -> list[Marker]:
    """Every cited number in ``text`` with the span of its bracket, in order (``[1,2]`` gives two markers)."""
    return [Marker(n, m.start(), m.end()) for m in MARKER.finditer(text) for n in _numbers(m.group(1))]


def strip_citations(text: str) -> str:
    """``text`` without citation markers (and the spaces or tabs before them)."""
    return re.sub(rf"[ \t]*{MARKER.pattern}", "", text)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-blank sentence of ``text``; trailing markers belong to the sentence before them."""
    spans: list[tuple[int, int]] = []
    markers = [(m.start(), m.end()) for m in MARKER.finditer(text)]  # "[1;2]" or "[1,\n2]" is not two sentences
    marker_starts = [marker_start for marker_start, _ in markers]
    start = 0
    for match in _TERMINAL.finditer(text):
        if match.start() < start or _inside_code(text, match) or match.group() != "\n" and false_end(text, match.start()):
            continue  # inside a trailer already taken, a command line's ";" / "!", or no end as the quoted text's
        k = bisect_right(marker_starts, match.start()) - 1
        if k >= 0 and match.start() < markers[k][1]:
            continue  # a separator inside a citation marker
        end = match.end() if match.group() == "\n" else _TRAILER.match(text, match.end()).end()  # type: ignore[union-attr]
        if text[start:end].strip():
            spans.append((start, end))
        start = end
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def _inside_code(text: str, match: re.Match[str]) -> bool:
    """An ASCII ``;`` or ``!`` that ends no sentence, as :mod:`rag.answer.sentences` cuts the quoted sentence: code's,
    right before a Latin character (``kern.info;kern.!err``) or between Latin words inside a Chinese sentence
    (``dquilt pop -a; while quilt push; do …``), and a ``;`` before a lower-case word or a number, joining two clauses
    of an English sentence (``Wi-Fi networks only; 5 GHz networks are not supported.``)."""
    mark, before, after = match.group(), text[: match.start()], text[match.end():]
    if mark not in (";", "!") or not before or not before[-1].isascii() or before[-1].isspace():
        return False
    if after[:1].isascii() and after[:1].isalnum():
        return True
    clause = re.split(r"[。！？；\n]", before)[-1]
    rest = after.lstrip(" ")
    if mark == ";" and not _CJK_RUN.search(clause):
        return after[:1].isspace() and rest[:1].isascii() and (rest[:1].islower() or rest[:1].isdigit())
    return mark == ";" and bool(_CJK_RUN.search(clause)) and rest[:1].isascii() and rest[:1].isalnum()


def split_sentences(text: str) -> list[str]:
    """The sentences of a Chinese or English text, stripped, markers kept with the sentence they follow."""
    return [text[s:e].strip() for s, e in sentence_spans(text)]


def content_units(text: str, all_unigrams: bool = False) -> set[str]:
    """Character bigrams of CJK runs (a one-character run counts as itself) and lower-cased non-stopword words.

    ``all_unigrams`` also adds every CJK character, for the chunk side: a one-character run in a sentence
    (``用 df``) then matches the same character inside a longer run of the chunk (``先用 df``).
    """
    text = unicodedata.normalize("NFKC", text).lower()
    units: set[str] = set()
    for run in _CJK_RUN.findall(text):
        units.update(run[i : i + 2] for i in range(len(run) - 1))
        if len(run) == 1 or all_unigrams:
            units.update(run)
    units.update(w for w in _WORD.findall(_CJK_RUN.sub(" ", text)) if w not in STOPWORDS)
    return units


def overlap(units: set[str], chunk_units: set[str]) -> float:
    """Share of ``units`` found in ``chunk_units`` (0 for an empty sentence)."""
    return len(units & chunk_units) / len(units) if units else 0.0


def best_quote(sentence: str, chunk: Chunk) -> str:
    """The sentence of ``chunk`` that shares the largest share of ``sentence``'s content units ("" if none)."""
    units = content_units(strip_citations(sentence))
    best, best_share = "", 0.0
    for candidate in split_sentences(chunk.text):
        share = overlap(units, content_units(candidate, all_unigrams=True))
        if share > best_share:
            best, best_share = candidate, share
    return best


def specifics(sentence: str) -> list[str]:
    """The checkable specifics of a sentence (see the module docstring), citations and list numbering removed."""
    text = _LIST_NUMBER.sub(" ", strip_citations(unicodedata.normalize("NFKC", sentence)))
    found = [m.group().rstrip(".-") for m in _SPECIFIC.finditer(text)]
    return list(dict.fromkeys(f for f in found if f))


def _squash(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).lower().split()).replace("“", '"').replace("”", '"')


def missing_specifics(sentence: str, chunk_text: str) -> list[str]:
    """The specifics of ``sentence`` that ``chunk_text`` does not contain (a number must stand alone: 30 is not
    in 300)."""
    flat = _squash(chunk_text)
    spaced = unicodedata.normalize("NFKC", chunk_text).lower()
    missing = []
    for item in specifics(sentence):
        if re.fullmatch(r"\d+(?:[.:/]\d+)*", item):
            present = re.search(rf"(?<![\d.]){re.escape(item)}(?!\d|\.\d)", spaced) is not None
        else:
            present = _squash(item.strip('《》“”"')) in flat
        if not present:
            missing.append(item)
    return missing


def verify(answer_text: str, hits: Sequence[Hit], min_overlap: float = 0.25,
           drop_unsupported: bool = True, texts: Sequence[str] | None = None) -> Verified:
    """Check every ``[n]`` of an answer against ``hits`` (``hits[n-1]`` is passage [n] of the prompt).

    Args:
        answer_text: the model's answer.
        hits: the hits the prompt numbered, in order (``Prompt.hits_used``).
        min_overlap: the share of a sentence's content units its cited chunk must contain.
        drop_unsupported: remove unsupported numbers from the text; False keeps them, flagged unsupported.
        texts: what each hit's sentences are checked against (``texts[n-1]`` for ``[n]``), when that is more than
            its chunk: an extractive answer quotes whole sentences, completed from the neighbouring chunks where
            the chunk's edge cuts them, so a quoted sentence's host or number may lie past the chunk's end.
            Default: the chunk texts.

    Returns:
        The cleaned text, the citations in order of first use, a quote per citation and the removed numbers.
        A marker on a sentence with no content of its own (``[1]`` alone on a line) is checked against the
        sentence before it.
    """
    chunk_units: dict[int, set[str]] = {}
    citations: dict[int, Citation] = {}
    quotes: dict[int, str] = {}
    removed: list[int] = []
    edits: list[tuple[int, int, str]] = []
    dropped: list[str] = []
    quoted_supported: set[int] = set()
    claim, units = "", set()
    for start, end in sentence_spans(answer_text):
        sentence = answer_text[start:end]
        own_claim = strip_citations(sentence)
        own_units = content_units(own_claim)
        if own_units:  # else keep the previous sentence's claim
            claim, units = own_claim, own_units
        sentence_edits: list[tuple[int, int, str]] = []
        cited = kept_any = False
        unsupported_specifics = False
        for match in MARKER.finditer(sentence):
            kept: list[int] = []
            for number in _numbers(match.group(1)):
                if not 1 <= number <= len(hits):
                    removed.append(number)
                    continue
                cited = True
                chunk = hits[number - 1].chunk
                source = texts[number - 1] if texts is not None and number <= len(texts) else chunk.text
                if number not in chunk_units:
                    chunk_units[number] = content_units(source, all_unigrams=True)
                lacking = missing_specifics(claim, source)
                unsupported_specifics |= bool(lacking)
                supported = overlap(units, chunk_units[number]) >= min_overlap and not lacking
                if not supported and drop_unsupported:
                    removed.append(number)
                    continue
                kept.append(number)
                kept_any = kept_any or supported
                earlier = citations.get(number)
                citations[number] = Citation(number, chunk, supported and (earlier is None or earlier.supported))
                if number not in quotes or (supported and number not in quoted_supported):
                    quotes[number] = best_quote(claim, chunk)  # from the first supported use, else the first use
                    if supported:
                        quoted_supported.add(number)
            edit_start = start + match.start()
            if not kept:  # the whole marker goes: take the blanks before it too ("五天 [9]。" -> "五天。")
                while edit_start > 0 and answer_text[edit_start - 1] in " \t":
                    edit_start -= 1
            sentence_edits.append((edit_start, start + match.end(), "".join(f"[{n}]" for n in kept)))
        if drop_unsupported and cited and not kept_any and unsupported_specifics:
            dropped.append(own_claim.strip())  # a claim its sources do not make (an injected host, a number)
            edits.append((start, end, ""))
        else:
            edits.extend(sentence_edits)
    text = answer_text
    for edit_start, edit_end, replacement in reversed(edits):
        text = text[:edit_start] + replacement + text[edit_end:]
    return Verified(text.strip() if dropped else text, list(citations.values()), quotes, removed, dropped)
