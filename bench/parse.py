"""PDF parsing speed: the raw pypdfium2 call vs the project's loader, same files, same run.

For each PDF under ``--corpus`` (default ``data/dev_corpus``; ``bash scripts/get_dev_corpus.sh`` fetches it):

* ``raw``: ``pypdfium2.PdfDocument`` + ``get_textpage().get_text_bounded()`` per page, in this process (the naive
  baseline: what the loader itself calls, without anything around it);
* ``loader``: ``rag.ingest.load.parse_files`` (a worker process, page records, ``normalize_text`` cleaning), wall time
  including the worker's start, and the worker's own parse time (``parse_s``, the steady-state figure).

One JSON line per file (best of ``--repeat`` runs each), then a summary over all files: pages/s, the loader/raw ratio
and cleanliness counters of the loader's output: ``(cid:`` markers, U+FFFD, and a space between two CJK characters
(the same counters on the raw text show what the cleaning removed).

    .venv/bin/python bench/parse.py                       # dev corpus, ~1 min on 2 cores
    .venv/bin/python bench/parse.py --corpus DIR --repeat 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.core.config import LoadConfig
from rag.ingest.load import parse_files

START = time.perf_counter()
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
CJK_SPACE_CJK = re.compile(f"[{CJK}][ \t\u00a0\u3000]+(?=[{CJK}])")


def emit(record: dict[str, Any], out: Any) -> None:
    line = json.dumps({**record, "elapsed_s": round(time.perf_counter() - START, 1)}, ensure_ascii=False)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")


def dirt(texts: list[str]) -> dict[str, int]:
    """Counts of the artefacts clean Chinese text must not have."""
    joined = "\n".join(texts)
    return {"cid": joined.count("(cid:"), "fffd": joined.count("\ufffd"), "cjk_space_cjk": len(CJK_SPACE_CJK.findall(joined)),
            "chars": len(joined)}


def raw_pdfium(path: Path) -> list[str]:
    """The raw parser call: pypdfium2 page text, in this process, without the worker or any cleaning."""
    from rag.ingest.parsers.pdf import pdf_pages_pdfium

    return pdf_pages_pdfium(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="data/dev_corpus", help="folder searched for *.pdf")
    parser.add_argument("--repeat", type=int, default=3, help="runs per file and path; the best is reported")
    parser.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus)
    pdfs = sorted(corpus.rglob("*.pdf"))
    if not pdfs:
        print(f"no PDFs under {corpus}; fetch the dev corpus with: bash scripts/get_dev_corpus.sh", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.out, "w", encoding="utf-8")) if args.out else None
        return run_bench(args, out)


def run_bench(args: argparse.Namespace, out: Any) -> int:
    corpus = Path(args.corpus)
    pdfs = sorted(corpus.rglob("*.pdf"))
    cfg = LoadConfig()
    totals = {"pages": 0, "raw_s": 0.0, "loader_s": 0.0, "parse_s": 0.0}
    dirty = {"cid": 0, "fffd": 0, "cjk_space_cjk": 0}
    for path in pdfs:
        source = path.relative_to(corpus).as_posix()
        raw_times, wall_times, parse_times = [], [], []
        raw_pages: list[str] = []
        texts: list[str] = []
        pages = 0
        for _ in range(max(1, args.repeat)):  # interleaved, so both paths see the same machine load
            t0 = time.perf_counter()
            raw_pages = raw_pdfium(path)
            raw_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            (parsed,) = list(parse_files([(path, source)], cfg))
            wall_times.append(time.perf_counter() - t0)
            parse_times.append(parsed.seconds)
            if not parsed.ok:
                emit({"file": source, "error_kind": parsed.error_kind, "error": parsed.error}, out)
                break
            texts = [d.text for d in parsed.documents]
            pages = parsed.pages
        if not texts:
            continue
        raw_s, wall_s, parse_s = min(raw_times), min(wall_times), min(parse_times)
        ours = dirt(texts)
        emit({"file": source, "pages": pages, "raw_pages_per_s": round(len(raw_pages) / raw_s, 1),
              "loader_pages_per_s": round(pages / wall_s, 1), "loader_parse_pages_per_s": round(pages / parse_s, 1),
              "ratio_wall": round(raw_s / wall_s, 3), "ratio_parse": round(raw_s / parse_s, 3),
              "raw_s": round(raw_s, 3), "loader_s": round(wall_s, 3), "parse_s": round(parse_s, 3),
              "ours": ours, "raw": dirt(raw_pages)}, out)
        totals["pages"] += pages
        totals["raw_s"] += raw_s
        totals["loader_s"] += wall_s
        totals["parse_s"] += parse_s
        for key in dirty:
            dirty[key] += ours[key]
    if totals["pages"]:
        ratio = totals["raw_s"] / totals["loader_s"]
        emit({"stage": "summary", "files": len(pdfs), "pages": totals["pages"],
              "raw_pages_per_s": round(totals["pages"] / totals["raw_s"], 1),
              "loader_pages_per_s": round(totals["pages"] / totals["loader_s"], 1),
              "loader_parse_pages_per_s": round(totals["pages"] / totals["parse_s"], 1),
              "ratio_wall": round(ratio, 3), "ratio_parse": round(totals["raw_s"] / totals["parse_s"], 3),
              "target_ratio": 0.7, "meets_ratio": ratio >= 0.7, "ours_dirt": dirty,
              "clean": not any(dirty.values())}, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
