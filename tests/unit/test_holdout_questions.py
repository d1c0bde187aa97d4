"""eval/holdout_questions.jsonl (the held-out set nobody tunes on): its format always; its evidence against
data/holdout_corpus when that has been built (``bash scripts/get_holdout_corpus.sh``), else that test is skipped.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ROOT / "eval" / "holdout_questions.jsonl"
CORPUS = ROOT / "data" / "holdout_corpus"
KINDS = {"man": "command-ref", "calc-help": "app-manual", "policy-html": "manual-html", "policy-pdf": "manual-pdf"}


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines()]


def test_format(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        assert set(row) == {"id", "question", "evidence", "source", "split", "kind", "lang", "cross_lingual"}, row
        assert re.fullmatch(r"ho-\d{3}", row["id"]), row
        assert row["split"] == "holdout", row
        assert row["kind"] in KINDS.values(), row
        if row["evidence"]:
            assert KINDS[row["source"].split("/", 1)[0]] == row["kind"], row
            assert all(10 <= len(e) <= 80 for e in row["evidence"]), row
        else:
            assert row["source"] == "" and row["cross_lingual"] is False, row
    assert len({row["id"] for row in rows}) == len(rows)
    assert len({row["question"] for row in rows}) == len(rows)


def test_counts(rows: list[dict[str, Any]]) -> None:
    answerable = [row for row in rows if row["evidence"]]
    assert (len(rows), len(answerable)) == (94, 79)
    langs = Counter(row["lang"] for row in rows)
    assert langs["zh"] / len(rows) >= 0.55
    assert sum(row["cross_lingual"] for row in answerable) / len(answerable) >= 0.15


@pytest.mark.integration
def test_evidence_occurs_in_source() -> None:
    if not CORPUS.is_dir():
        pytest.skip("data/holdout_corpus absent (bash scripts/get_holdout_corpus.sh)")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_holdout_evidence.py")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:]
