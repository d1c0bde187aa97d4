"""OCR quality and speed: the project's loader (``load.ocr``) vs RapidOCR's own API and command line, same pages.

Pages are generated: lines of the sample knowledge base (Chinese from ``knowledge/使用指南.md``, English from
``knowledge/product_manual_en.pdf``), 8 lines a page, rendered with the Debian CJK font (fonts-wqy-microhei) at 12 pt
for 150 and 300 dpi, rotated by a random angle in [-3°, +3°] and given Gaussian noise (sigma 12 grey levels).

* ``cer``: character error rate of the loader's text per page (edit distance / reference length, after NFKC and
  removing whitespace), by dpi and language; one JSON line per page, then a summary per dpi. For the English pages
  also the word error rate (the same edit distance over lower-cased words split at whitespace and punctuation):
  the CER ignores spaces, the WER counts "Workingonlivewires" as three words lost and one wrong.
* ``speed``: pages/s over the same PNG files for (a) RapidOCR's Python API in a loop, one process, the engine loaded
  once and not timed (its best case); (b) the project's ``parse_files`` (isolated worker processes,
  ``load.workers`` 1 and 2, worker start and model load included); (c) RapidOCR's command line, one process a page
  (``--cli-pages`` of them; it loads the models each time). Runs are interleaved ``--repeat`` times, best kept, since
  the machine may be shared.
* ``page_threads``: pages/s of one scanned PDF through the loader (one isolated worker, as an ingest parses a file)
  with ``load.ocr_threads`` 1 (one page after the other, the code before per-page threads) and 2, interleaved
  ``--repeat`` times; the PDF is the generated pages at 300 dpi, or ``--scan-pdf`` (e.g. a scanned dev2 copy from
  ``scripts/make_scanned_copies.py``).

    .venv/bin/python bench/ocr.py                        # 12 pages per dpi, ~5 min on 2 busy cores
    .venv/bin/python bench/ocr.py --pages 2 --repeat 1 --cli-pages 1 --out /tmp/ocr.jsonl   # smoke
    .venv/bin/python bench/ocr.py --skip-cer --skip-speed --pages 8 --repeat 2            # per-page threads only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.core.config import LoadConfig  # noqa: E402
from rag.ingest.load import parse_file, parse_files  # noqa: E402
from rag.ingest.parsers.ocr import ocr_memory_mb  # noqa: E402
from tests.office_files import image_pdf, render_text_image  # noqa: E402  (the tests' page renderer: one definition)

START = time.perf_counter()
LINES_PER_PAGE = 8
LOADER_PARSE_S: dict[int, float] = {}  # workers -> summed parse seconds of the last loader() run


def emit(record: dict[str, Any], out: Any) -> None:
    line = json.dumps({**record, "elapsed_s": round(time.perf_counter() - START, 1)}, ensure_ascii=False)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")


def squash(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", unicodedata.normalize("NFKC", text).lower())


def edit_distance(a: str | list[str], b: str | list[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def wrap(text: str, width: int) -> list[str]:
    """Cut text into lines of about ``width`` display units (a CJK character counts 2), at spaces for Latin text."""
    lines, line, units = [], "", 0
    for word in re.findall(r"[\u2e80-\uffef]|[^\s\u2e80-\uffef]+\s*", text):
        cost = 2 if len(word) == 1 and ord(word) > 0x2e7f else len(word)
        if units + cost > width and line:
            lines.append(line.strip())
            line, units = "", 0
        line, units = line + word, units + cost
    if line.strip():
        lines.append(line.strip())
    return lines


def source_lines() -> dict[str, list[str]]:
    """Body lines of the sample knowledge base: ``{"zh": [...], "en": [...]}``."""
    guide = (ROOT / "knowledge" / "使用指南.md").read_text(encoding="utf-8")
    guide = re.sub(r"```.*?```", "", guide, flags=re.S)
    zh = [line for paragraph in guide.split("\n") if paragraph and not paragraph.startswith("#")
          for line in wrap(paragraph.replace("`", ""), 44)]
    manual = parse_file(ROOT / "knowledge" / "product_manual_en.pdf", "manual.pdf", LoadConfig(ocr="off"))
    english = " ".join(" ".join(document.text.split()) for document in manual)
    return {"zh": zh, "en": [line for line in wrap(english, 60) if len(line) > 20]}


def make_pages(folder: Path, pages_per_dpi: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    lines = source_lines()
    pages = []
    for dpi in (150, 300):
        for number in range(pages_per_dpi):
            language = "zh" if number % 2 == 0 else "en"
            start = rng.randrange(0, max(1, len(lines[language]) - LINES_PER_PAGE))
            text = lines[language][start : start + LINES_PER_PAGE]
            angle = rng.uniform(-3.0, 3.0)
            image = render_text_image(text, dpi=dpi, font_pt=12, angle=angle, noise=12.0, seed=rng.randrange(1 << 30))
            path = folder / f"p{dpi}_{number:03d}.png"
            image.save(path, dpi=(dpi, dpi))  # type: ignore[attr-defined]
            pages.append({"path": path, "dpi": dpi, "language": language, "angle": round(angle, 2),
                          "reference": "\n".join(text), "size": list(image.size)})  # type: ignore[attr-defined]
    return pages


def measure_cer(pages: list[dict[str, Any]], cfg: LoadConfig, out: Any) -> dict[str, float]:
    totals: dict[tuple[int, str], list[int]] = {}
    word_totals: dict[int, list[int]] = {}
    for page in pages:
        documents = parse_file(page["path"], page["path"].name, cfg)
        got = squash("\n".join(document.text for document in documents))
        reference = squash(page["reference"])
        errors = edit_distance(reference, got)
        for key in ((page["dpi"], page["language"]), (page["dpi"], "all")):
            pair = totals.setdefault(key, [0, 0])
            pair[0] += errors
            pair[1] += len(reference)
        wer = {}
        if page["language"] == "en":
            reference_words = words(page["reference"])
            word_errors = edit_distance(reference_words, words("\n".join(document.text for document in documents)))
            pair = word_totals.setdefault(page["dpi"], [0, 0])
            pair[0] += word_errors
            pair[1] += len(reference_words)
            wer = {"wer": round(word_errors / len(reference_words), 4)}
        emit({"kind": "cer_page", "page": page["path"].name, "dpi": page["dpi"], "language": page["language"],
              "angle": page["angle"], "size": page["size"], "cer": round(errors / len(reference), 4), **wer,
              "confidence": documents[0].metadata["ocr_confidence"] if documents else None}, out)
    for (dpi, language), (errors, chars) in sorted(totals.items()):
        emit({"kind": "cer", "dpi": dpi, "language": language, "chars": chars, "cer": round(errors / chars, 4)}, out)
    for dpi, (errors, count) in sorted(word_totals.items()):
        emit({"kind": "wer", "dpi": dpi, "language": "en", "words": count, "wer": round(errors / count, 4)}, out)
    return {f"cer_{dpi}dpi": round(errors / chars, 4) for (dpi, language), (errors, chars) in totals.items()
            if language == "all"}


def rapidocr_api(paths: list[Path]) -> float:
    """Seconds for RapidOCR's own API over ``paths``, in this process, the engine loaded before the clock starts."""
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()
    engine(str(paths[0]))  # warm-up: the first call allocates the session buffers
    started = time.perf_counter()
    for path in paths:
        engine(str(path))
    return time.perf_counter() - started


def loader(paths: list[Path], workers: int) -> float:
    """Seconds for the project's isolated parse workers over ``paths`` (start-up and model load included)."""
    cfg = LoadConfig(workers=workers, timeout_s=600)
    started = time.perf_counter()
    results = list(parse_files([(path, path.name) for path in paths], cfg))
    assert all(result.ok for result in results), [result.error for result in results if not result.ok]
    seconds = time.perf_counter() - started
    LOADER_PARSE_S[workers] = sum(result.seconds for result in results)  # the workers' own time, model load included
    return seconds


def rapidocr_cli(paths: list[Path]) -> float:
    """Seconds for RapidOCR's command line (``rapidocr_onnxruntime -img PAGE``, its ``main``), one process a page."""
    started = time.perf_counter()
    for path in paths:
        subprocess.run([sys.executable, "-m", "rapidocr_onnxruntime.main", "-img", str(path)], check=True,
                       capture_output=True)
    return time.perf_counter() - started


def measure_speed(pages: list[dict[str, Any]], repeat: int, cli_pages: int, out: Any) -> dict[str, float]:
    best: dict[str, float] = {}
    ratios: dict[str, float] = {}
    for dpi in (150, 300):
        paths = [page["path"] for page in pages if page["dpi"] == dpi]
        runs = {"rapidocr_api": (rapidocr_api, ()), "loader_workers1": (loader, (1,)), "loader_workers2": (loader, (2,))}
        for attempt in range(repeat):
            for name, (run, extra) in runs.items():
                seconds = run(paths, *extra)
                key = f"{name}@{dpi}"
                best[key] = min(best.get(key, float("inf")), seconds)
                parse_s = {"parse_s_sum": round(LOADER_PARSE_S[extra[0]], 2)} if extra else {}
                emit({"kind": "speed_run", "engine": name, "dpi": dpi, "attempt": attempt, "pages": len(paths),
                      "seconds": round(seconds, 2), "pages_per_s": round(len(paths) / seconds, 3), **parse_s}, out)
        if cli_pages:
            seconds = rapidocr_cli(paths[:cli_pages])
            emit({"kind": "speed_run", "engine": "rapidocr_cli", "dpi": dpi, "pages": cli_pages,
                  "seconds": round(seconds, 2), "pages_per_s": round(cli_pages / seconds, 3)}, out)
        baseline = len(paths) / best[f"rapidocr_api@{dpi}"]
        for name in ("loader_workers1", "loader_workers2"):
            rate = len(paths) / best[f"{name}@{dpi}"]
            ratios[f"{name}_vs_api_{dpi}dpi"] = round(rate / baseline, 3)
            emit({"kind": "speed", "dpi": dpi, "engine": name, "pages_per_s": round(rate, 3),
                  "rapidocr_api_pages_per_s": round(baseline, 3), "ratio": round(rate / baseline, 3)}, out)
    return ratios


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_page_threads(pdf: Path, thread_counts: list[int], repeat: int, out: Any) -> dict[str, float]:
    """Pages/s of one scanned PDF in one isolated worker for each ``load.ocr_threads``, best of ``repeat`` rounds."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(pdf))
    pages = len(document)
    document.close()
    best: dict[int, float] = {}
    for attempt in range(repeat):
        for threads in thread_counts:
            cfg = LoadConfig(workers=1, timeout_s=3600, ocr_threads=threads, memory_mb=max(2048, ocr_memory_mb(threads)))
            cpu_before = children_cpu_s()
            started = time.perf_counter()
            (result,) = parse_files([(pdf, pdf.name)], cfg)
            seconds = time.perf_counter() - started
            cpu_s = children_cpu_s() - cpu_before  # the worker's CPU time (it is waited for when it stops)
            assert result.ok, result.error
            best[threads] = min(best.get(threads, float("inf")), seconds)
            emit({"kind": "page_threads_run", "pdf": pdf.name, "pages": pages, "ocr_threads": threads,
                  "attempt": attempt, "seconds": round(seconds, 2), "pages_per_s": round(pages / seconds, 4),
                  "parse_s": round(result.seconds, 2), "worker_cpu_s": round(cpu_s, 1), "chars": sum(len(d.text) for d in result.documents),
                  "load_avg_1min": round(os.getloadavg()[0], 1)}, out)
    baseline = pages / best[thread_counts[0]]
    summary = {}
    for threads in thread_counts:
        rate = pages / best[threads]
        summary[f"page_threads{threads}_pages_per_s"] = round(rate, 4)
        emit({"kind": "page_threads", "pdf": pdf.name, "pages": pages, "ocr_threads": threads,
              "pages_per_s": round(rate, 4), f"vs_threads{thread_counts[0]}": round(rate / baseline, 3)}, out)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=12, help="pages per dpi (half Chinese, half English)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved speed runs; the best is kept")
    parser.add_argument("--cli-pages", type=int, default=3, help="pages for RapidOCR's command line (0 = skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-cer", action="store_true")
    parser.add_argument("--skip-page-threads", action="store_true")
    parser.add_argument("--page-threads", default="1,2", help="load.ocr_threads values to compare (first = baseline)")
    parser.add_argument("--scan-pdf", type=Path, help="time this scanned PDF instead of the generated 300 dpi pages")
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = parser.parse_args(argv)
    out = args.out.open("w", encoding="utf-8") if args.out else None
    with tempfile.TemporaryDirectory() as folder:
        pages = make_pages(Path(folder), args.pages, args.seed)
        emit({"kind": "setup", "pages": len(pages), "font_pt": 12, "noise_sigma": 12, "max_angle": 3}, out)
        summary = {} if args.skip_cer else measure_cer(pages, LoadConfig(), out)
        if not args.skip_speed:
            summary.update(measure_speed(pages, args.repeat, args.cli_pages, out))
        if not args.skip_page_threads:
            pdf = args.scan_pdf
            if pdf is None:
                pdf = Path(folder) / "scan300.pdf"
                images = [Image.open(page["path"]) for page in pages if page["dpi"] == 300]
                pdf.write_bytes(image_pdf(images, dpi=300))
            thread_counts = [int(value) for value in args.page_threads.split(",")]
            summary.update(measure_page_threads(pdf, thread_counts, args.repeat, out))
        emit({"stage": "summary", **summary}, out)
    if out is not None:
        out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
