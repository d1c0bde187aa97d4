"""Block rescoring: rank the top chunks again by their best blank-line block, so the block that answers wins.

Why: in option lists (man pages, command references) and long structured chapters the right file is usually in the
top five but the wrong chunk of it is first: a 500-character chunk holds several options, and BM25 and the embedder
score the chunk as a whole, so a chunk that mentions the question's words in different options looks as good as
the one whose single option block holds them together. Each of the top ``retrieve.block_candidates`` chunks is cut
at blank lines into blocks (an option line with its description, a list item, a paragraph: the child), its best
block is scored by the IDF mass of the question's words (and of their dictionary translations) it holds, and that
order is fused with the retrieval order by reciprocal ranks. The chunk (the parent) is still what is returned, so
the answer keeps its context. No model and no re-ingest. A block holds a term when it contains it as a substring
(a Latin-script term as a whole word), not by re-tokenising: jieba over 20 chunks cost ~20 ms a query, the
substring test well under 1 ms. Options keep their case here as in BM25 (:mod:`rag.index.bm25`): the question's
``-H`` is found in the block of ``-H``, not in the block of ``-h``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from rag.index.bm25 import DASHES, is_cjk_token, is_option_token

_BLOCK = re.compile(r"\n[^\S\n]*\n")

# A term's pattern, its weight, and whether it is looked for in the block as written (True) or lower-cased.
Finder = tuple[re.Pattern[str], float, bool]


def _finder(term: str, weight: float) -> Finder:
    """A Chinese term anywhere; a Latin-script term (``ls``) only between non-word characters; an option (``-H``,
    ``%F``) only where the tokenizer would read it as that option, in its case (a ``--long`` option lower-cased)."""
    if is_cjk_token(term):
        return re.compile(re.escape(term)), weight, False
    if is_option_token(term):
        before = r"(?<![A-Za-z0-9_%])" if term.startswith("%") else r"(?<![A-Za-z0-9_.+#/-])"
        return re.compile(rf"{before}{re.escape(term)}(?![A-Za-z0-9_])"), weight, not term.startswith("--")
    return re.compile(rf"(?<![a-z0-9]){re.escape(term)}(?![a-z0-9])"), weight, False


def finders(weights: Mapping[str, float]) -> list[Finder]:
    """The patterns of the terms with a positive weight, made once per question."""
    return [_finder(term, weight) for term, weight in weights.items() if weight > 0]


def best_block_weight(text: str, weights: Mapping[str, float], found: list[Finder] | None = None) -> float:
    """The largest sum of ``weights`` of distinct terms (tokens of :func:`rag.index.bm25.tokenize`) that one
    blank-line block of ``text`` holds (``found``: the terms' :func:`finders`, when the caller has made them)."""
    found = found if found is not None else finders(weights)
    best = 0.0
    for block in _BLOCK.split(unicodedata.normalize("NFKC", text).translate(DASHES)):
        if block.strip():
            lower = block.lower()
            best = max(best, sum(weight for finder, weight, as_written in found
                                 if finder.search(block if as_written else lower)))
    return best


def rerank_by_blocks(ranking: list[tuple[int, float]], texts: Mapping[int, str], weights: Mapping[str, float],
                     rrf_k: int, block_weight: float) -> list[tuple[int, float]]:
    """Fuse ``ranking`` (chunk id, score; best first) with its order by best block, ``1/(k + r) + w/(k + r_block)``.

    Args:
        ranking: the chunks to reorder, best first (ids missing from ``texts`` are dropped).
        texts: chunk id -> chunk text.
        weights: query term -> weight (its BM25 idf).
        rrf_k: the reciprocal-rank constant.
        block_weight: the weight of the block order (the retrieval order has weight 1).
    """
    ranking = [item for item in ranking if item[0] in texts]
    found = finders(weights)
    block = {chunk_id: best_block_weight(texts[chunk_id], weights, found) for chunk_id, _ in ranking}
    by_block = sorted(ranking, key=lambda item: -block[item[0]])  # stable: ties keep the retrieval order
    fused = {chunk_id: 1.0 / (rrf_k + rank) for rank, (chunk_id, _) in enumerate(ranking, 1)}
    for rank, (chunk_id, _) in enumerate(by_block, 1):
        fused[chunk_id] += block_weight / (rrf_k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))
