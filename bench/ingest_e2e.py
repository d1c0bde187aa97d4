"""End-to-end ingest time: ``python ingest.py CORPUS --index DIR`` from scratch, re-run, and after one changed file.

The corpus (default ``data/dev_corpus``) is copied to a temp folder first, so the change never touches the real one.
Runs, each a fresh ``ingest.py`` process timed from outside (interpreter start and imports included):

* ``scratch``: empty index folder;
* ``unchanged``: the same folder again (every file only hashed);
* ``one_changed``: one file's content changed (a line appended), so one file is re-parsed and re-embedded;
* ``rebuild`` (the naive baseline for an update): ``--rebuild``, i.e. re-parse and re-embed everything.

One JSON line per run with the report's totals (files, pages, chunks, seconds inside ``sync_folder``), the
index size and bytes per chunk; the last line compares the incremental update with the rebuild.

    .venv/bin/python bench/ingest_e2e.py                       # embed.source=hash: no model, CPU, ~1 min
    .venv/bin/python bench/ingest_e2e.py --embedder default    # the configured embedder (slow on CPU: ~20 min)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START = time.perf_counter()


def emit(record: dict[str, Any], out: Any) -> None:
    line = json.dumps({**record, "elapsed_s": round(time.perf_counter() - START, 1)}, ensure_ascii=False)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ingest(corpus: Path, index: Path, overrides: list[str], extra: list[str]) -> tuple[float, dict[str, Any]]:
    """Run ingest.py once; return (wall seconds, report totals)."""
    report_path = index.parent / f"report-{time.monotonic_ns()}.json"
    command = [sys.executable, str(ROOT / "ingest.py"), str(corpus), "--index", str(index), "--quiet",
               "--json-report", str(report_path), *extra, *overrides]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"ingest.py failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report_path.unlink()
    return seconds, report["totals"]


def pick_file(corpus: Path) -> Path:
    """A text-like file to change (HTML / Markdown / text), the largest one for a realistic re-parse."""
    candidates = [p for p in corpus.rglob("*") if p.suffix.lower() in (".html", ".htm", ".md", ".txt")]
    if not candidates:
        raise SystemExit(f"no HTML/Markdown/text file under {corpus} to change")
    return max(candidates, key=lambda p: p.stat().st_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(ROOT / "data" / "dev_corpus"))
    parser.add_argument("--embedder", default="hash", choices=["hash", "default"],
                        help="hash: embed.source=hash (model-independent); default: the config's embedder")
    parser.add_argument("--skip-rebuild", action="store_true", help="leave out the naive full-rebuild baseline")
    parser.add_argument("--out", default=None, help="also write the JSON lines to this file")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = parser.parse_args(argv)
    source = Path(args.corpus)
    if not source.is_dir():
        print(f"no corpus at {source}; fetch the dev corpus with: bash scripts/get_dev_corpus.sh", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.out, "w", encoding="utf-8")) if args.out else None
        return run_bench(args, out)


def run_bench(args: argparse.Namespace, out: Any) -> int:
    source = Path(args.corpus)
    overrides = (["embed.source=hash"] if args.embedder == "hash" else []) + list(args.overrides)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        corpus, index = Path(tmp) / "corpus", Path(tmp) / "index"
        shutil.copytree(source, corpus)
        rows: dict[str, dict[str, Any]] = {}

        def run(name: str, extra: list[str] | None = None) -> None:
            seconds, totals = ingest(corpus, index, overrides, extra or [])
            chunks = json.loads((index / "manifest.json").read_text(encoding="utf-8"))["counts"]["chunks"]
            size = folder_bytes(index)
            rows[name] = {"run": name, "embedder": args.embedder, "wall_s": round(seconds, 2),
                          "sync_s": totals["seconds"], "files": totals["files"], "parsed_new_or_updated":
                          totals["new"] + totals["updated"], "pages_parsed": totals["pages_parsed"],
                          "chunks_indexed": totals["chunks_indexed"], "chunks_total": chunks,
                          "index_bytes": size, "bytes_per_chunk": round(size / chunks, 1) if chunks else None}
            emit(rows[name], out)

        run("scratch")
        run("unchanged")
        changed = pick_file(corpus)
        with open(changed, "a", encoding="utf-8") as handle:
            handle.write("\n<p>bench: 一处新增的段落，用于增量索引测试。</p>\n")
        rows_before = dict(rows)
        run("one_changed")
        rows["one_changed"]["changed_file"] = changed.relative_to(corpus).as_posix()
        if not args.skip_rebuild:
            run("rebuild", ["--rebuild"])
        summary: dict[str, Any] = {"stage": "summary", "embedder": args.embedder,
                                   "scratch_s": rows_before["scratch"]["wall_s"],
                                   "one_changed_s": rows["one_changed"]["wall_s"]}
        if "rebuild" in rows:
            summary["rebuild_s"] = rows["rebuild"]["wall_s"]
            summary["incremental_speedup_vs_rebuild"] = round(rows["rebuild"]["wall_s"] / rows["one_changed"]["wall_s"], 1)
        emit(summary, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
