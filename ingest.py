"""Build or update a knowledge index from a folder of documents.

    python ingest.py FOLDER [--index DIR] [--config F] [key=value ...] [--rebuild] [--json-report F]

Incremental: unchanged files cost a hash, changed files are re-parsed, deleted files leave the index.
Exit code 0 when the index is usable (even if some files failed: they are listed), 1 on a fatal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rag.cli.common import add_config_args, config_from_args, run_cli, table

if TYPE_CHECKING:
    from rag.index.report import IngestReport


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ingest.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the folder of documents (PDF, HTML, Markdown, DOCX, TXT, ...)")
    parser.add_argument("--index", default=None, help="index folder (default: index.dir from the config)")
    parser.add_argument("--rebuild", action="store_true", help="re-parse and re-embed everything (new embedder)")
    parser.add_argument("--keep-deleted", action="store_true", help="keep chunks of files deleted from the folder")
    parser.add_argument("--retry-failed", action="store_true", help="re-parse files that failed before")
    parser.add_argument("--wait", action="store_true", help="wait for another running ingest instead of exiting")
    parser.add_argument("--json-report", default=None, metavar="F", help="also write the per-file report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, only the summary")
    add_config_args(parser)
    return parser.parse_intermixed_args(argv)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rag.index.sync import unchanged_report

    cfg = config_from_args(args)
    # a bad folder or an unchanged one is answered before the embedder (seconds of torch + model) loads
    nothing_to_do = None if args.rebuild else unchanged_report(
        args.folder, cfg, index_dir=args.index, keep_deleted=True if args.keep_deleted else None,
        retry_failed=args.retry_failed)
    if nothing_to_do is not None:
        print(f"embedder: {nothing_to_do.embedder} (not loaded: nothing changed)", file=sys.stderr)
        print_report(nothing_to_do, args.json_report)
        return 0

    from rag.embed.embedder import load_embedder
    from rag.index.sync import sync_folder

    embedder = load_embedder(cfg.embed)
    name = f"{embedder.name} (dim {embedder.dim})" if embedder is not None else "none: BM25 keyword search only"
    print(f"embedder: {name}", file=sys.stderr)
    bars: dict[str, tqdm] = {}
    labels = {"hash": "hashing", "parse": "parsing", "embed": "embedding"}

    def progress(stage: str, done: int, total: int) -> None:
        if args.quiet:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=labels.get(stage, stage), unit="chunk" if stage == "embed" else "file",
                                     file=sys.stderr, dynamic_ncols=True, leave=False)
        bar.total = max(total, done)
        bar.update(done - bar.n)

    try:
        report = sync_folder(args.folder, cfg, embedder, index_dir=args.index, rebuild=args.rebuild,
                             keep_deleted=True if args.keep_deleted else None, retry_failed=args.retry_failed,
                             wait=args.wait, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    print_report(report, args.json_report)
    return 0


def print_report(report: IngestReport, json_report: str | None) -> None:
    """The changed files as a table, skipped types in one line, the totals; the JSON report if asked for."""
    changed = [f for f in report.files if f.status not in ("unchanged", "skipped")]
    if changed:
        rows = [[f.status, f.chunks, f.pages or "", f"{f.seconds:.2f}" if f.seconds else "", f.source,
                 f"{f.error_kind}: {f.error}" if f.error_kind else ""] for f in changed]
        print(table(rows, ["status", "chunks", "pages", "sec", "file", "reason"]))
    skipped = Counter(Path(f.source).suffix.lower() or "(no suffix)" for f in report.files if f.status == "skipped")
    if skipped:
        kinds = ", ".join(f"{suffix} ×{n}" for suffix, n in skipped.most_common())
        print(f"skipped {sum(skipped.values())} files of types the loader does not read: {kinds}"
              f"{' (each is listed in the --json-report)' if json_report else ''}")
    totals = report.totals()
    print(
        f"{totals['files']} files: {totals['new']} new, {totals['updated']} updated, {totals['unchanged']} unchanged, "
        f"{totals['failed']} failed, {totals['skipped']} skipped, {totals['deleted']} deleted, {totals['kept']} kept | "
        f"{totals['pages_parsed']} pages parsed, {totals['chunks_indexed']} chunks indexed in {totals['seconds']} s "
        f"({totals['chunks_per_s']} chunks/s) | index: {report.index_dir} (generation {report.generation})"
    )
    if json_report:
        Path(json_report).write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_cli(main, arguments))
