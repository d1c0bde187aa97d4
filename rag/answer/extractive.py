"""The extractive backend: answers with the retrieved sentences that best match the question, cited.

It is the app's answer when no language model is available. It ignores the prompt except for its question (see
:func:`rag.answer.prompt.question_of`) and reads the passages from ``context``, which must be the prompt's ``hits_used`` so
that ``[n]`` is ``context[n - 1]``. Each sentence is quoted verbatim from its chunk, so the answer passes
:func:`rag.answer.cite.verify`; no sentence sharing enough words with the question means the refusal sentence.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rag.answer.cite import MARKER, content_units, split_sentences, strip_citations
from rag.answer.prompt import REFUSAL, defang, detect_language, question_of
from rag.core.text import CJK
from rag.core.types import Hit, Message
from rag.index.bm25 import tokenize
from rag.llm.base import GenerationConfig, ModelInfo

_WORD = re.compile(r"[^\W_]+")
_LEAD = re.compile(r"^[\s#>*•·-]+")  # markdown heading / quote / list marks before a sentence
_ENDS = ("。", "！", "？", "!", "?", ".", "；", ";", "…")
_CJK_CLOSERS = ("。", "！", "？", "；", "…", "”", "」", "』", "）")


@dataclass(frozen=True)
class _Candidate:
    score: float
    hit_number: int  # 1-based position in context
    text: str
    matched: frozenset[str]  # question tokens the sentence contains


class ExtractiveModel:
    """A :class:`~rag.llm.base.ChatModel` that quotes the best supporting sentences from the retrieved hits.

    Args:
        max_sentences: at most this many sentences per answer.
        max_chars: at most this many characters of quoted text (a longer best sentence is cut with "…").
        min_coverage: the share of the question's tokens the best sentence must contain, else it refuses.
        piece_chars: characters per streamed piece.
    """

    context_window = 1 << 20  # no model behind it: the prompt's size never matters

    def __init__(self, max_sentences: int = 3, max_chars: int = 300, min_coverage: float = 0.2,
                 piece_chars: int = 8) -> None:
        if not 0.0 <= min_coverage <= 1.0:
            raise ValueError(f"min_coverage={min_coverage} (llm.extractive_min_coverage) must be between 0 and 1")
        if max_sentences < 1 or max_chars < 10:
            raise ValueError(f"max_sentences={max_sentences} must be ≥ 1 and max_chars={max_chars} ≥ 10")
        self.max_sentences, self.max_chars = max_sentences, max_chars
        self.min_coverage, self.piece_chars = min_coverage, piece_chars

    def stream(self, messages: Sequence[Message], gen: GenerationConfig | None = None, adapter: str | None = None,
               context: Sequence[Hit] = ()) -> Iterator[str]:
        """Yield :meth:`answer` in pieces of ``piece_chars`` characters (``gen`` and ``adapter`` do not apply)."""
        text = self.answer(question_of(messages), context, _language(messages))
        for start in range(0, len(text), self.piece_chars):
            yield text[start : start + self.piece_chars]

    def answer(self, question: str, hits: Sequence[Hit], language: str | None = None) -> str:
        """1–``max_sentences`` sentences from ``hits``, each followed by ``[n]`` of its hit, or the refusal.

        Sentences are scored by the share of the question's BM25 tokens they contain, plus a small prior for
        higher-ranked hits and earlier sentences; after the best one, a sentence joins when it matches question
        tokens not yet covered or scores within 75 % of the best.
        """
        lang = language or detect_language(question)
        wanted = set(tokenize(question))
        candidates = self._candidates(wanted, hits)
        if not candidates or len(candidates[0].matched) / len(wanted) < self.min_coverage:
            return REFUSAL[lang]
        best = candidates[0]
        chosen = [best]
        covered = set(best.matched)
        used_chars = min(len(best.text), self.max_chars)
        for candidate in candidates[1:]:
            if len(chosen) == self.max_sentences:
                break
            useful = bool(candidate.matched - covered) or candidate.score >= 0.75 * best.score
            if useful and used_chars + len(candidate.text) <= self.max_chars:
                chosen.append(candidate)
                covered |= candidate.matched
                used_chars += len(candidate.text)
        return self._render(chosen)

    def _candidates(self, wanted: set[str], hits: Sequence[Hit]) -> list[_Candidate]:
        candidates: list[_Candidate] = []
        seen: set[str] = set()
        for rank, hit in enumerate(hits):
            for position, raw in enumerate(split_sentences(hit.chunk.text)):
                text = _LEAD.sub("", strip_citations(raw)).strip()
                key = "".join(unicodedata.normalize("NFKC", text).lower().split())
                if len(content_units(text)) < 3 or key in seen:  # headings, fragments, overlap duplicates
                    continue
                seen.add(key)
                matched = frozenset(wanted.intersection(tokenize(text)))
                if matched:
                    score = len(matched) / len(wanted) + 0.05 / (1 + rank) + 0.02 / (1 + position)
                    candidates.append(_Candidate(score, rank + 1, text, matched))
        return sorted(candidates, key=lambda c: -c.score)

    def _render(self, chosen: list[_Candidate]) -> str:
        parts: list[str] = []
        for candidate in chosen:
            # quoted document text is data: defang role tags / fences, and its own [n] can't pass for our citations
            text = MARKER.sub(lambda m: f"({m.group(1)})", defang(candidate.text))
            if len(text) > self.max_chars:
                text = text[: self.max_chars - 1].rstrip() + "…"
            if not text.endswith(_ENDS):
                text += "。" if CJK.search(text) else "."
            if parts and not parts[-1].rstrip("[]0123456789").endswith(_CJK_CLOSERS):
                parts.append(" ")
            parts.append(f"{text}[{candidate.hit_number}]")
        return "".join(parts)

    def count_tokens(self, text: str) -> int:
        """A rough estimate: one token per CJK character, 1.3 per other word, 0.5 per symbol."""
        cjk = len(CJK.findall(text))
        rest = CJK.sub(" ", text)
        words = len(_WORD.findall(rest))
        symbols = sum(1 for ch in _WORD.sub(" ", rest) if not ch.isspace())
        return math.ceil(cjk + 1.3 * words + 0.5 * symbols)

    def info(self) -> ModelInfo:
        return ModelInfo(backend="extractive", model_id="extractive")


def _language(messages: Sequence[Message]) -> str | None:
    """The language the prompt asked for (its system message carries that language's refusal sentence), if any."""
    system = next((m.content for m in messages if m.role == "system"), "")
    return next((lang for lang, sentence in REFUSAL.items() if sentence in system), None)
