"""Shared plumbing for the command-line tools: config arguments, logging, and the one-line error exit."""

from __future__ import annotations

import argparse
import logging
import re
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from rag.core.config import RagConfig, load_config
from rag.core.errors import RagError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. retrieve.top_k=8 split.chunk_size=400")
    parser.add_argument("--config", default=None, help="YAML config (default: configs/rag/default.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+=")


def question_and_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, example: str) -> None:
    """Split positionals into ``args.question`` (the words) and ``args.overrides`` (``key=value``), any order."""
    words = args.overrides
    args.overrides = [w for w in words if OVERRIDE.match(w)]
    args.question = " ".join(w for w in words if not OVERRIDE.match(w))
    if not args.question.strip():
        parser.error(f"give a question, e.g. {example}")


def config_from_args(args: argparse.Namespace) -> RagConfig:
    return load_config(args.config, args.overrides)


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s" if debug else "%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "filelock", "jieba", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def run_cli(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``main``; the project's own errors become one line on stderr and exit code 1."""
    setup_logging(getattr(args, "debug", False))
    try:
        return main(args)
    except RagError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:  # met mid-query: a docstore damaged past its first pages
        if getattr(args, "debug", False):
            raise
        print(f"error: the index's docstore.sqlite cannot be read ({exc}); rebuild the index from your documents "
              "with: python ingest.py FOLDER --index INDEX --rebuild (the damaged file is moved aside)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the index keeps everything committed so far", file=sys.stderr)
        return 130


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain text table (CJK characters counted as two columns wide)."""
    import unicodedata

    def width(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)

    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(width(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c + " " * (w - width(c)) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fallback_note(reason: str) -> str:
    """The one line a CLI prints when the language model is missing and answers are extractive."""
    reason = " ".join(reason.split()).rstrip(" .;")
    return f"note: {reason}. Answering extractively (quoting the documents) meanwhile."
