"""Make a copy of a corpus in which some PDFs are replaced by image-only "scans" of themselves, for the OCR retrieval check.

Why: the OCR target of issue 19 is about retrieval, not only characters: questions answered by a scanned copy of a
document should be found about as often as with its text original (hit@5 within 0.05). A real scanned corpus with
questions does not exist offline, so the scans are made from the dev2 PDFs: each page is rendered with pypdfium2,
turned to grey, tilted by a small random angle and given Gaussian noise like a flatbed scan, and written back as a
PDF page holding only that picture (no text layer), with the original page size. Everything else in the corpus is
copied unchanged, so the scanned index has the same distractors as the text one, and the relative path of each
scanned file is the original's (the questions' ``source`` still names it).

    .venv/bin/python scripts/make_scanned_copies.py --corpus data/dev2_corpus --out /tmp/dev2_ocr \\
        --questions eval/dev2_questions.jsonl --pages-per-file 12 \\
        pdf/maint-guide.zh-cn.pdf pdf/debian-edu-bookworm-manual.zh-cn.pdf

``--pages-per-file`` keeps only the pages that answer the most questions, in both copies, so that OCR fits a small
CPU budget. Then ingest both folders, run ``python -m rag.eval retrieval --out`` on the written questions for each, and
compare them per source with ``scripts/compare_scanned_eval.py`` (docs/BENCHMARKS.md,
"OCR", retrieval on scanned copies).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file: the project's own normalising and PDF reading
    sys.path.insert(0, str(ROOT))


def scan_page(page: Any, dpi: int, max_angle: float, noise: float, rng: random.Random) -> Any:
    """One PDF page as a grey PIL image that looks scanned: rendered at ``dpi``, tilted, with grain."""
    import numpy as np
    from PIL import Image

    image = page.render(scale=dpi / 72).to_pil().convert("L")
    if max_angle:
        image = image.rotate(rng.uniform(-max_angle, max_angle), resample=Image.Resampling.BICUBIC, fillcolor=255)
    if noise:
        grain = np.random.default_rng(rng.randrange(1 << 30)).normal(0.0, noise, size=(image.height, image.width))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
    return image


def scan_pdf(source: Path, target: Path, dpi: int, max_angle: float, noise: float, seed: int) -> int:
    """Write ``target``: every page of ``source`` as a picture only, one page at a time (memory: one page). Returns pages."""
    import pypdfium2 as pdfium

    rng = random.Random(f"{seed}:{source.name}")
    pdf = pdfium.PdfDocument(str(source))
    try:
        for index in range(len(pdf)):
            page = pdf[index]
            try:
                image = scan_page(page, dpi, max_angle, noise, rng)
            finally:
                page.close()
            # JPEG inside the PDF, as scanners write; resolution keeps the page size of the original
            image.save(target, "PDF", resolution=float(dpi), append=index > 0, quality=85)
        return len(pdf)
    finally:
        pdf.close()


def text_layer_chars(path: Path) -> int:
    """Characters in the text layer of ``path`` (0 for a real image-only PDF)."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    try:
        total = 0
        for index in range(len(pdf)):
            page = pdf[index]
            textpage = page.get_textpage()
            total += len(textpage.get_text_bounded().strip())
            textpage.close()
            page.close()
        return total
    finally:
        pdf.close()


def evidence_pages(path: Path, questions: list[dict[str, Any]], most: int) -> tuple[list[int], list[dict[str, Any]]]:
    """The ``most`` pages (0-based, in order) of a PDF that hold the evidence of the most questions, and those questions.

    A question's page is the first whose text layer holds one of its evidence strings (after the normalising that
    ``rag.eval`` does); pages are chosen by how many questions they answer, so a small OCR budget covers many questions.
    """
    from rag.cli.eval import normalise
    from rag.ingest.parsers.pdf import pdf_pages_pdfium

    texts = [normalise(text) for text in pdf_pages_pdfium(path)]
    page_of: dict[str, int] = {}
    for question in questions:
        wanted = [normalise(evidence) for evidence in question.get("evidence") or []]
        found = [index for index, text in enumerate(texts) if any(w in text for w in wanted)]
        if found:
            page_of[question["id"]] = found[0]
    counts = Counter(page_of.values())
    kept = sorted(page for page, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:most])
    return kept, [question for question in questions if page_of.get(question["id"]) in kept]


def keep_pages(source: Path, target: Path, pages: list[int]) -> None:
    """Write a PDF of only ``pages`` (0-based) of ``source``, text layer and all."""
    import pypdfium2 as pdfium

    pdf, trimmed = pdfium.PdfDocument(str(source)), pdfium.PdfDocument.new()
    try:
        trimmed.import_pages(pdf, pages)
        trimmed.save(str(target))
    finally:
        trimmed.close()
        pdf.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="PDFs to scan, relative to --corpus (as the questions' source)")
    parser.add_argument("--corpus", type=Path, required=True, help="the corpus folder (copied whole)")
    parser.add_argument("--out", type=Path, required=True,
                        help="new folder: OUT/text (the corpus), OUT/scanned (the same with the PDFs scanned), "
                             "OUT/questions.jsonl (the questions whose source is scanned)")
    parser.add_argument("--questions", type=Path, required=True, help="questions JSONL with source and evidence")
    parser.add_argument("--pages-per-file", type=int, default=0,
                        help="keep only this many pages of each PDF, those answering the most questions, in both "
                             "copies (OCR on 2 busy cores takes 20-40 s a page); 0 = all pages")
    parser.add_argument("--dpi", type=int, default=150, help="scan resolution (office scanners: 150-300)")
    parser.add_argument("--max-angle", type=float, default=1.0, help="pages tilted by up to this many degrees")
    parser.add_argument("--noise", type=float, default=8.0, help="Gaussian grain, sigma in grey levels (0 = none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"{args.out} exists; give a new folder (the corpus is copied into it twice)", file=sys.stderr)
        return 1
    missing = [name for name in args.files if not (args.corpus / name).is_file() or not name.lower().endswith(".pdf")]
    if missing:
        print(f"not PDFs under {args.corpus}: {', '.join(missing)}", file=sys.stderr)
        return 1
    all_questions = [json.loads(line) for line in args.questions.read_text(encoding="utf-8").splitlines()
                     if line.strip()]
    text, scanned = args.out / "text", args.out / "scanned"
    shutil.copytree(args.corpus, text)
    shutil.copytree(args.corpus, scanned)
    chosen: list[dict[str, Any]] = []
    for name in args.files:
        started = time.perf_counter()
        questions = [question for question in all_questions if question.get("source") == name]
        if args.pages_per_file:
            pages, questions = evidence_pages(args.corpus / name, questions, args.pages_per_file)
            keep_pages(args.corpus / name, text / name, pages)
        else:
            pages = []
        chosen += questions
        (scanned / name).unlink()
        count = scan_pdf(text / name, scanned / name, args.dpi, args.max_angle, args.noise, args.seed)
        chars = text_layer_chars(scanned / name)
        if chars:
            print(f"{name}: the scanned copy still has {chars} characters of text layer", file=sys.stderr)
            return 1
        print(json.dumps({"file": name, "pages": count, "kept_pages_1based": [page + 1 for page in pages],
                          "questions": len(questions), "dpi": args.dpi, "max_angle": args.max_angle,
                          "noise": args.noise, "bytes": (scanned / name).stat().st_size,
                          "seconds": round(time.perf_counter() - started, 1)}, ensure_ascii=False), flush=True)
    (args.out / "questions.jsonl").write_text(
        "".join(json.dumps(question, ensure_ascii=False) + "\n" for question in chosen), encoding="utf-8")
    print(json.dumps({"questions": len(chosen), "file": str(args.out / "questions.jsonl")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
