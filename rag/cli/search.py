"""Query an index from the command line.

    python -m rag.search --index DIR [--k 5] [--mode hybrid] [--json] "问题"
"""

from __future__ import annotations

import argparse
import json
import sys

from rag.cli.common import add_config_args, config_from_args, question_and_overrides, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag.search", description="Print the best chunks for a question.")
    parser.add_argument("--index", default=None, help="index folder (default: index.dir from the config)")
    parser.add_argument("--k", type=int, default=None, help="how many chunks (default: retrieve.top_k)")
    parser.add_argument("--mode", choices=["dense", "bm25", "hybrid"], default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object per hit")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    question_and_overrides(parser, args, 'python -m rag.search --index indexes/default "如何重建索引？"')
    return args


def main(args: argparse.Namespace) -> int:
    from rag.answer.retrieve import Retriever
    from rag.index.reader import KnowledgeIndex

    cfg = config_from_args(args)
    index = KnowledgeIndex.open(args.index or cfg.index.dir, cfg)
    retriever = Retriever(index, cfg.retrieve)
    hits = retriever.search(args.question, top_k=args.k, mode=args.mode)
    if not args.json:
        stats = index.stats()
        print(f"index {stats['directory']}: {stats.get('chunks', 0)} chunks, embedder {stats['embedder']}, "
              f"mode {retriever.effective_mode(args.mode)}", file=sys.stderr)
    if not hits:
        print("no relevant chunks found" if not args.json else "", file=sys.stderr if not args.json else sys.stdout)
    for rank, hit in enumerate(hits, 1):
        chunk = hit.chunk
        if args.json:
            print(json.dumps({"rank": rank, "score": hit.score, "dense": hit.dense_score, "bm25": hit.bm25_score,
                              "source": chunk.source, "page": chunk.page, "heading": list(chunk.heading),
                              "text": chunk.text, "also_in": list(hit.also_in)}, ensure_ascii=False))
            continue
        where = chunk.source + (f" p.{chunk.page}" if chunk.page else "")
        heading = " > ".join(chunk.heading)
        also = f"  also in {', '.join(hit.also_in)}" if hit.also_in else ""
        print(f"[{rank}] {hit.score:.4f}  {where}" + (f"  ({heading})" if heading else "") + also)
        print("    " + chunk.text.replace("\n", " ")[:300])
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args()))
