"""The command lines as a user runs them: ingest.py, python -m rag.search / rag.ask / ... (hash embedder, extractive answers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
    assert hits[0]["also_in"] == []  # no other file holds the same text

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
        "retrieve.rerank_candidates, retrieve.score_threshold, retrieve.bm25_threshold, retrieve.unknown_name_min_chars, "
        "retrieve.bridge, retrieve.bridge_weight, retrieve.block_weight, retrieve.block_candidates, "
        "retrieve.passage_chars, retrieve.edition_similarity"
    ]


def test_search_without_index_says_how_to_build_one(tmp_path: Path) -> None:
    result = run("-m", "rag.search", "--index", str(tmp_path / "none"), "问题")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: no index at {tmp_path / 'none'}; build one with: python ingest.py FOLDER --index {tmp_path / 'none'}"


@pytest.mark.integration
def test_ingest_lists_unsupported_files_as_skipped_not_failed(tmp_path: Path) -> None:
    """Images and stylesheets next to HTML pages are left out without a wall of "failed" lines; a real failure
    still shows as failed."""
    docs = tmp_path / "docs"
    (docs / "img").mkdir(parents=True)
    (docs / "page.html").write_text("<html><body><h1>备份</h1><p>每天凌晨两点备份数据库。</p></body></html>",
                                    encoding="utf-8")
    for name in ("img/a.gif", "img/b.gif", "style.css"):
        (docs / name).write_bytes(b"GIF89a not really")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 truncated")
    report = tmp_path / "report.json"
    for _ in range(2):  # the second run: unchanged files, skipped ones still counted, not re-listed as failures
        done = run("ingest.py", str(docs), "--index", str(tmp_path / "idx"), "--quiet", "--json-report", str(report),
                   "embed.source=hash")
        assert done.returncode == 0, done.stderr
        assert "skipped 3 files of types the loader does not read: .gif ×2, .css ×1" in done.stdout
        assert "1 failed, 3 skipped" in done.stdout
        assert "a.gif" not in done.stdout and "broken.pdf" in done.stdout
    statuses = {f["source"]: f["status"] for f in json.loads(report.read_text(encoding="utf-8"))["files"]}
    assert statuses == {"page.html": "unchanged", "img/a.gif": "skipped", "img/b.gif": "skipped",
                        "style.css": "skipped", "broken.pdf": "failed"}


# Every command a user types (README), unchanged by the package-per-stage layout: it starts, and its usage line
# names the command as the user typed it.
USER_COMMANDS = [
    (["ingest.py"], "usage: ingest.py"),
    (["-m", "rag.search"], "usage: python -m rag.search"),
    (["-m", "rag.ask"], "usage: python -m rag.ask"),
    (["-m", "rag.eval"], "usage: python -m rag.eval"),
    (["-m", "rag.serve"], "usage: python -m rag.serve"),
    (["-m", "rag.migrate"], "usage: python -m rag.migrate"),
    (["-m", "rag.models"], "usage: python -m rag.models"),
    (["-m", "finetune"], "usage: python -m finetune"),
    (["-m", "rag.embed.e5"], "usage: python -m rag.embed.e5"),
]


@pytest.mark.parametrize(("command", "usage"), USER_COMMANDS, ids=[" ".join(c) for c, _ in USER_COMMANDS])
def test_every_user_command_answers_help(command: list[str], usage: str) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage), result.stdout[:200]


def test_models_check_runs_as_a_user_types_it() -> None:
    result = run("-m", "rag.models", "check", "llm.model=nobody/none", "embed.source=hash")
    assert result.returncode == 0, result.stderr
    assert "nobody/none" in result.stdout
