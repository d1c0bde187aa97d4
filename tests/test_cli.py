"""The command lines as a user runs them: ingest.py, rag.search, rag.ask (hash embedder, extractive answers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


@pytest.mark.integration
def test_ingest_search_ask_round_trip(corpus: Path, tmp_path: Path) -> None:
    index = tmp_path / "idx"
    common = ["embed.source=hash", "split.chunk_size=120", "split.chunk_overlap=20"]
    report = tmp_path / "report.json"
    first = run("ingest.py", str(corpus), "--index", str(index), "--quiet", "--json-report", str(report), *common)
    assert first.returncode == 0, first.stderr
    assert "embedder: hash-embedder (dim 256)" in first.stderr
    assert "4 files: 4 new, 0 updated, 0 unchanged, 0 failed" in first.stdout
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["totals"]["new"] == 4 and {f["status"] for f in data["files"]} == {"new"}
    second = run("ingest.py", str(corpus), "--index", str(index), "--quiet", *common)
    assert "4 files: 0 new, 0 updated, 4 unchanged" in second.stdout

    search = run("-m", "rag.search", "--index", str(index), "--k", "2", "--json", "WireGuard", "客户端", *common)
    hits = [json.loads(line) for line in search.stdout.splitlines()]
    assert search.returncode == 0 and len(hits) == 2 and hits[0]["source"] == "en/vpn.md"

    ask = run("-m", "rag.ask", "--index", str(index), "--json", "新磁盘怎样开机自动挂载？", "llm.backend=extractive",
              *common)
    answer = json.loads(ask.stdout)
    assert ask.returncode == 0 and "/etc/fstab" in answer["answer"] and answer["citations"][0]["source"] == "运维/磁盘.md"


def test_bad_override_is_one_line_and_exit_1(corpus: Path, tmp_path: Path) -> None:
    result = run("ingest.py", str(corpus), "--index", str(tmp_path / "i"), "retrieve.topk=3")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown config key retrieve.topk; valid keys: retrieve.mode, retrieve.top_k, retrieve.candidates, "
        "retrieve.fusion, retrieve.rrf_k, retrieve.dense_weight, retrieve.bm25_weight, retrieve.reranker, "
        "retrieve.rerank_candidates, retrieve.score_threshold, retrieve.bm25_threshold, retrieve.unknown_name_min_chars"
    ]


def test_search_without_index_says_how_to_build_one(tmp_path: Path) -> None:
    result = run("-m", "rag.search", "--index", str(tmp_path / "none"), "问题")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: no index at {tmp_path / 'none'}; build one with: python ingest.py FOLDER --index {tmp_path / 'none'}"
