"""Block rescoring: rank the top chunks again by their best blank-line block, so the block that answers wins.

Why: in option lists (man pages, command references) and long structured chapters the right file is usually in the
top five but the wrong chunk of it is first: a 500-character chunk holds several options, and BM25 and the embedder
score the chunk as a whole, so a chunk that mentions the question's words in different options looks as good as
the one whose single option block holds them together. Each of the top ``retrieve.block_candidates`` chunks is cut
at blank lines into blocks (an option line with its description, a list item, a paragraph: the child), its best
block is scored by the IDF mass of the question's words (and of their dictionary translations) it holds, and that
order is fused with the retrieval order by reciprocal ranks. The chunk (the parent) is still what is returned, so
the answer keeps its context. No model and no re-ingest; it costs one jieba pass over about 10k characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from rag.index.bm25 import tokenize

_BLOCK = re.compile(r"\n[^\S\n]*\n")


def best_block_weight(text: str, weights: Mapping[str, float]) -> float:
    """The largest sum of ``weights`` of distinct terms that one blank-line block of ``text`` holds."""
    best = 0.0
    for block in _BLOCK.split(text):
        if block.strip():
            present = set(tokenize(block))
            best = max(best, sum(weight for term, weight in weights.items() if term in present))
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
    block = {chunk_id: best_block_weight(texts[chunk_id], weights) for chunk_id, _ in ranking}
    by_block = sorted(ranking, key=lambda item: -block[item[0]])  # stable: ties keep the retrieval order
    fused = {chunk_id: 1.0 / (rrf_k + rank) for rank, (chunk_id, _) in enumerate(ranking, 1)}
    for rank, (chunk_id, _) in enumerate(by_block, 1):
        fused[chunk_id] += block_weight / (rrf_k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))
