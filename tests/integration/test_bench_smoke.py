"""Each benchmark script runs on tiny inputs in seconds and prints JSON lines (the numbers mean nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.broken_files import PDF_PAGES, make_pdf
from tests.conftest import write_corpus

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def run_script(name: str, *args: str) -> list[dict]:  # type: ignore[type-arg]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "bench" / name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert seconds < 10, f"{name} took {seconds:.1f} s"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines and lines[-1].get("stage") == "summary"
    return lines


def test_retrieval_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    lines = run_script("retrieval.py", "--size", "3000", "--dim", "32", "--clusters", "20", "--queries", "30",
                       "--small", "--out", str(out))
    rows = {row["index"]: row for row in lines if "index" in row}
    assert set(rows) == {"flat", "ivf_sq8", "ivf", "hnsw_sq8", "hnsw"}
    for row in rows.values():
        assert {"n", "build_s", "p50_ms", "p99_ms", "recall@10", "disk_bytes_per_chunk", "ram_bytes_per_chunk"} <= set(row)
        assert row["n"] == 3000 and 0.0 <= row["recall@10"] <= 1.0 and row["disk_bytes_per_chunk"] > 0
    assert rows["flat"]["recall@10"] == 1.0
    assert lines[-1]["auto_policy"]["kind_at_n"] == "flat"
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(lines)


def test_parse_bench_smoke(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "valid.pdf").write_bytes(make_pdf(PDF_PAGES))
    lines = run_script("parse.py", "--corpus", str(tmp_path / "docs"), "--repeat", "1")
    (row,) = [line for line in lines if "file" in line]
    assert row["file"] == "valid.pdf" and row["pages"] >= 1 and row["raw_pages_per_s"] > 0
    assert set(row["ours"]) == {"cid", "fffd", "cjk_space_cjk", "chars"}
    assert lines[-1]["clean"] is True and lines[-1]["pages"] == row["pages"]


def test_ingest_e2e_bench_smoke(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "kb")
    lines = run_script("ingest_e2e.py", "--corpus", str(corpus), "--skip-rebuild", "load.workers=1")
    runs = {line["run"]: line for line in lines if "run" in line}
    assert set(runs) == {"scratch", "unchanged", "one_changed"}
    assert runs["scratch"]["parsed_new_or_updated"] == 4 and runs["unchanged"]["parsed_new_or_updated"] == 0
    assert runs["one_changed"]["parsed_new_or_updated"] == 1 and runs["scratch"]["chunks_total"] > 0


def test_milvus_vs_faiss_bench_smoke(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus", reason="pymilvus not installed: pip install -r requirements-extra.txt")
    pytest.importorskip("milvus_lite", reason="milvus-lite not installed: pip install -r requirements-extra.txt")
    lines = run_script("milvus_vs_faiss.py", "--n", "2000", "--dim", "32", "--clusters", "20", "--queries", "30",
                       "--out", str(tmp_path / "m.jsonl"))
    rows = {row["index"]: row for row in lines if "index" in row}
    assert set(rows) == {"faiss_flat", "faiss_auto", "faiss_auto_large", "milvus_lite_hnsw", "milvus_lite_ivf_flat"}
    for row in rows.values():
        assert {"n", "build_s", "p50_ms", "p99_ms", "recall@10"} <= set(row) and row["n"] == 2000
        assert 0.0 <= row["recall@10"] <= 1.0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert rows["faiss_flat"]["recall@10"] == 1.0 and rows["faiss_auto"]["kind"] == "flat"
    assert rows["milvus_lite_hnsw"]["recall@10"] >= 0.9  # exact neighbours found through the collection
    assert set(lines[-1]["p50_vs_faiss_flat"]) == set(rows)


def test_quant_quality_bench_smoke(tmp_path: Path) -> None:
    """A few steps of the little model: quantization changes the logits a little (int8 less than int4), never wholly."""
    lines = run_script("quant_quality.py", "--text", "README.md", "--steps", "4", "--hidden", "64", "--layers", "1",
                       "--prompts", "2", "--new-tokens", "8", "--vocab", "600", "--threads", "1")
    rows = {row["stage"]: row for row in lines}
    assert rows["model"]["held_out_tokens"] > 0 and rows["float32"]["perplexity"] > 1
    assert 0 < rows["int8"]["logits_rel_l2"] < rows["int4"]["logits_rel_l2"] < 0.5
    for kind in ("int8", "int4"):
        assert 0.0 <= rows[kind]["greedy_agreement_teacher_forced"] <= 1.0
        assert abs(rows[kind]["perplexity_vs_float32"] - 1) < 0.5
        assert rows["summary"][kind]["logits_rel_l2"] == rows[kind]["logits_rel_l2"]


def test_train_speed_bench_smoke() -> None:
    """Tiny shape on CPU: the naive loop and the recipe's trainer both run, and the recipe's packed first batch has
    the loss of its conversations run one at a time."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train_speed.py"), "--small", "--steps", "3",
                           "--warmup", "1", "--rows", "48", "--variants", "naive;recipe"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    naive, recipe, summary = lines
    assert "error" not in naive and "error" not in recipe, lines
    assert recipe["batching"] == "packing" and recipe["micro_batch_size"] == 12 and recipe["lora_dropout"] == 0.0
    assert recipe["packing_check"]["sequences"] > recipe["micro_batch_size"]  # several conversations per row
    assert recipe["packing_check"]["abs_diff"] < 1e-4
    assert recipe["compile"] == "none"  # train.compile_layers=auto compiles only on a CUDA GPU
    for line in (naive, recipe):  # memory phases (None on CPU) and the cost of the untimed steps are reported
        assert {"load_peak_memory_gib", "train_peak_memory_gib", "model_memory_gib", "first_step_s",
                "warmup_overhead_s"} <= set(line)
        assert line["first_step_s"] > 0 and line["steady_step_s"] > 0
    assert summary["summary"] and summary["speedup"] > 0
    ratios = summary["variants"]
    assert ratios["naive"]["vs_naive"] == 1.0 and ratios["recipe"]["vs_recipe"] == 1.0
    assert ratios["recipe"]["vs_naive"] == round(recipe["tokens_per_s"] / naive["tokens_per_s"], 2)


def test_ocr_bench_smoke(tmp_path: Path) -> None:
    """bench/ocr.py on one page per dpi, no API/CLI speed runs, one round of the per-page thread comparison (OCR on a
    busy CPU takes seconds a page: no time bound here)."""
    out = tmp_path / "ocr.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "ocr.py"), "--pages", "1", "--skip-speed", "--repeat",
                           "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    pages = [line for line in lines if line.get("kind") == "cer_page"]
    assert [(page["dpi"], page["language"]) for page in pages] == [(150, "zh"), (300, "zh")]
    assert all(0.0 <= page["cer"] <= 1.0 and -3 <= page["angle"] <= 3 for page in pages)
    runs = [line for line in lines if line.get("kind") == "page_threads_run"]
    assert [(run["ocr_threads"], run["pages"]) for run in runs] == [(1, 1), (2, 1)]
    assert runs[0]["chars"] == runs[1]["chars"] > 20  # the threads read the same text as one page after the other
    assert set(lines[-1]) == {"stage", "cer_150dpi", "cer_300dpi", "page_threads1_pages_per_s",
                              "page_threads2_pages_per_s", "elapsed_s"} and lines[-1]["cer_300dpi"] < 0.5
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(lines)
