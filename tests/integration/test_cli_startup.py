"""Every command line answers --help, a bad path, a bad config key or an unchanged folder without loading heavy libraries.

Each command runs in a fresh interpreter under ``-X importtime``, whose stderr names every module imported; the
limits are generous (a loaded 2-core machine answers in about 1 s; loading torch and the embedder took 15-28 s).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from rag.index.layout import LOCK

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "sentence_transformers", "streamlit", "faiss")
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", re.MULTILINE)
LIMIT_S = 30.0  # far above the ~1 s these take; far below a run that loads torch and a model on a slow machine

pytestmark = pytest.mark.integration


def run(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime ARGS`` in the repository; (the result, the top-level packages it imported)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "KBQA_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=LIMIT_S)
    return done, {name.split(".")[0] for name in IMPORTED.findall(done.stderr)}


def messages(done: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the importtime lines: what the user sees."""
    return [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("import time:")]


@pytest.mark.parametrize("command", [
    ["ingest.py"], ["-m", "rag.search"], ["-m", "rag.ask"], ["-m", "rag.eval"], ["-m", "rag.serve"],
    ["-m", "rag.migrate"], ["-m", "rag.models"], ["-m", "finetune"], ["-m", "finetune", "train"],
])
def test_help_loads_no_heavy_library(command: list[str]) -> None:
    done, imported = run(*command, "--help")
    assert done.returncode == 0 and "usage:" in done.stdout
    assert not imported & set(HEAVY), f"{' '.join(command)} --help imported {sorted(imported & set(HEAVY))}"


@pytest.mark.parametrize(("command", "expected"), [
    (["ingest.py", "/nonexistent/kbqa-docs"],
     "error: knowledge folder /nonexistent/kbqa-docs does not exist; create it and put documents in it"),
    (["ingest.py", "knowledge", "retrieve.top_kk=3"], "error: unknown config key retrieve.top_kk"),
    (["-m", "rag.search", "--index", "/nonexistent/kbqa-index", "VPN"], "error: no index at /nonexistent/kbqa-index"),
    (["-m", "rag.ask", "--index", "/nonexistent/kbqa-index", "VPN"], "error: no index at /nonexistent/kbqa-index"),
    (["-m", "rag.eval", "retrieval", "--questions", "/nonexistent/q.jsonl"],
     "error: questions file /nonexistent/q.jsonl does not exist"),
    (["-m", "finetune", "train", "tiny", "lora.rankk=4"], "error: unknown config key lora.rankk"),
])
def test_bad_input_is_one_line_before_any_model_loads(command: list[str], expected: str) -> None:
    done, imported = run(*command)
    assert done.returncode == 1
    lines = messages(done)
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not imported & {"torch", "transformers", "sentence_transformers"}, sorted(imported & set(HEAVY))


def test_unchanged_folder_does_not_load_the_embedder(corpus: Path, tmp_path: Path) -> None:
    index = tmp_path / "idx"
    first, _ = run("ingest.py", str(corpus), "--index", str(index), "--quiet", "embed.source=hash")
    assert first.returncode == 0, first.stderr
    again, imported = run("ingest.py", str(corpus), "--index", str(index), "--quiet", "embed.source=hash")
    assert again.returncode == 0, again.stderr
    assert "embedder: hash-embedder (not loaded: nothing changed)" in messages(again)
    assert "4 files: 0 new, 0 updated, 4 unchanged, 0 failed" in again.stdout
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))

    with FileLock(str(index / LOCK)):  # another ingest writing: not "unchanged" but the one-writer message
        locked, _ = run("ingest.py", str(corpus), "--index", str(index), "--quiet", "embed.source=hash")
    assert locked.returncode == 1 and messages(locked)[-1].startswith("error: another ingest is writing to")

    # another embed.* model setting, or a changed file, takes the full path (which checks the embedder)
    other, _ = run("ingest.py", str(corpus), "--index", str(index), "--quiet", "embed.source=hash", "embed.model=x")
    assert "not loaded" not in other.stderr and "4 unchanged" in other.stdout
    (corpus / "运维/打印机.txt").write_text("新的内容：打印机在三楼。", encoding="utf-8")
    changed, _ = run("ingest.py", str(corpus), "--index", str(index), "--quiet", "embed.source=hash")
    assert "embedder: hash-embedder (dim 256)" in messages(changed)
    assert "0 new, 1 updated, 3 unchanged" in changed.stdout
