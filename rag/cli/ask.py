"""Ask the knowledge base a question from the command line; the answer streams, then its sources.

    python -m rag.ask --index DIR [--adapter NAME] [--compare] "问题"
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from rag.cli.common import add_config_args, config_from_args, fallback_note, question_and_overrides, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag.ask", description="Answer a question with citations.")
    parser.add_argument("--index", default=None, help="index folder (default: index.dir)")
    parser.add_argument("--adapter", default=None, help="LoRA adapter under llm.adapters_dir (default: llm.adapter)")
    parser.add_argument("--compare", action="store_true", help="answer with the base model and the adapter")
    parser.add_argument("--json", action="store_true", help="print the final answer as one JSON object")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    question_and_overrides(parser, args, 'python -m rag.ask "如何重建索引？"')
    if args.compare and not args.adapter:
        parser.error("--compare needs --adapter NAME")
    return args


def _print_stream(stream, label: str = "") -> None:  # type: ignore[no-untyped-def]
    if label:
        print(f"== {label} ==")
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    answer = stream.answer
    if answer.citations:
        print("\n来源 / Sources:")
        for citation in answer.citations:
            chunk = citation.chunk
            where = chunk.source + (f" p.{chunk.page}" if chunk.page else "")
            flag = "" if citation.supported else "  (unsupported)"
            quote = stream.quotes.get(citation.number, chunk.text[:120]).replace("\n", " ")
            print(f"[{citation.number}] {where}{flag}: {quote}")
    elif answer.refused and answer.hits:
        print("\n最接近的段落 / Closest passages:")
        for rank, hit in enumerate(answer.hits[:3], 1):
            print(f"  {rank}. {hit.chunk.source}: {hit.chunk.text[:100]!r}")


def main(args: argparse.Namespace) -> int:
    from rag.answer.pipeline import BASE, open_pipeline

    cfg = config_from_args(args)
    if args.adapter:  # the backend loads the configured adapter (checked against the base) next to the base model
        cfg = replace(cfg, llm=replace(cfg.llm, adapter=args.adapter))
    pipeline, fallback = open_pipeline(cfg, args.index)
    if fallback:
        print(fallback_note(fallback), file=sys.stderr)
    if args.compare:
        base, tuned = pipeline.compare(args.question, args.adapter)
        _print_stream(base, "base")
        _print_stream(tuned, f"adapter {args.adapter}")
        return 0
    stream = pipeline.ask(args.question, adapter=args.adapter if args.adapter else BASE)
    if args.json:
        stream.text()
        answer = stream.answer
        assert answer is not None
        print(json.dumps({"answer": answer.text, "refused": answer.refused, "model": answer.model, "citations": [
            {"n": c.number, "source": c.chunk.source, "page": c.chunk.page, "chunk_id": c.chunk.id,
             "supported": c.supported, "quote": stream.quotes.get(c.number, "")} for c in answer.citations]},
            ensure_ascii=False))
        return 0
    _print_stream(stream)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args()))
