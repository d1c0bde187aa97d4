"""scripts/make_scanned_copies.py: the corpus copies behind the OCR retrieval check (docs/BENCHMARKS.md, "OCR")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.ingest.parsers.pdf import pdf_pages_pdfium
from tests.broken_files import make_pdf
from tests.conftest import load_script

pytestmark = pytest.mark.integration
SCRIPT = "scripts/make_scanned_copies.py"


def test_scanned_copy_keeps_the_answering_pages_as_pictures_only(tmp_path: Path) -> None:
    import pypdfium2 as pdfium

    corpus = tmp_path / "corpus"
    (corpus / "pdf").mkdir(parents=True)
    pages = [["Page one talks about printers"], ["Page two is filler"], ["Page three: backups run at 02:00"]]
    (corpus / "pdf" / "guide.pdf").write_bytes(make_pdf(pages))
    (corpus / "notes.txt").write_text("plain notes", encoding="utf-8")
    questions = [
        {"id": "q1", "question": "When do backups run?", "evidence": ["backups run at 02:00"], "source": "pdf/guide.pdf"},
        {"id": "q2", "question": "Printers?", "evidence": ["talks about printers"], "source": "pdf/guide.pdf"},
        {"id": "q3", "question": "Backups?", "evidence": ["Page three"], "source": "pdf/guide.pdf"},
        {"id": "q4", "question": "Notes?", "evidence": ["plain notes"], "source": "notes.txt"},
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    out = tmp_path / "out"
    code = load_script(SCRIPT).main(["--corpus", str(corpus), "--out", str(out), "--questions", str(tmp_path / "q.jsonl"),
                               "--pages-per-file", "1", "--dpi", "72", "pdf/guide.pdf"])
    assert code == 0
    # page 3 answers two questions, page 1 one: with room for one page, page 3 is kept, in both copies
    assert [text.strip() for text in pdf_pages_pdfium(out / "text" / "pdf" / "guide.pdf")] == [
        "Page three: backups run at 02:00"]
    assert pdf_pages_pdfium(out / "scanned" / "pdf" / "guide.pdf") == [""]  # no text layer left
    original, scan = (pdfium.PdfDocument(str(out / side / "pdf" / "guide.pdf")) for side in ("text", "scanned"))
    assert scan[0].get_size() == pytest.approx(original[0].get_size(), abs=1.0)  # the scan keeps the page size
    assert [q["id"] for q in map(json.loads, (out / "questions.jsonl").read_text(encoding="utf-8").splitlines())] == [
        "q1", "q3"]
    assert (out / "text" / "notes.txt").read_text(encoding="utf-8") == "plain notes"
    assert (out / "scanned" / "notes.txt").read_text(encoding="utf-8") == "plain notes"
    assert load_script(SCRIPT).main(["--corpus", str(corpus), "--out", str(out), "--questions", str(tmp_path / "q.jsonl"),
                               "pdf/guide.pdf"]) == 1  # never writes into an existing folder


def test_word_space_bench_counts_the_text_layer_spaces_ocr_gets_back(tmp_path: Path) -> None:
    """bench/ocr_spaces.py on a one-page scan made by the script above: counts against the text layer."""
    bench = load_script("bench/ocr_spaces.py")
    text = tmp_path / "text.pdf"
    text.write_bytes(make_pdf([["The backup job runs every night at two and keeps ten copies"]]))
    scanned = tmp_path / "scanned.pdf"
    load_script(SCRIPT).scan_pdf(text, scanned, dpi=200, max_angle=0.0, noise=0.0, seed=0)
    out = tmp_path / "spaces.jsonl"
    assert bench.main(["--scanned", str(scanned), "--text", str(text), "--out", str(out)]) == 0
    page, summary = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert page["file"] == "scanned.pdf" and page["page"] == 1
    totals = summary["summary"]
    assert totals["respace"]["text_layer"] == totals["recogniser"]["text_layer"] == 11  # 12 words, read whole
    assert totals["respace"]["found"] >= 10 and totals["respace"]["false"] == 0
    assert totals["respace"]["found"] >= totals["recogniser"]["found"]
    assert bench.main(["--scanned", str(scanned), "--out", str(out), "--text", str(text), "--text", str(text)]) == 1
