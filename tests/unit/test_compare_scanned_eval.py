"""scripts/compare_scanned_eval.py: per-source hit@k / MRR of the text originals vs their scanned copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script

SCRIPT = "scripts/compare_scanned_eval.py"


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_groups_gap_and_the_questions_lost_or_gained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = write(tmp_path / "q.jsonl", [
        {"id": "a", "source": "pdf/one.pdf", "lang": "zh"}, {"id": "b", "source": "pdf/one.pdf", "lang": "en"},
        {"id": "c", "source": "pdf/two.pdf", "lang": "zh"}, {"id": "d", "source": "pdf/two.pdf", "lang": "zh"}])
    text = write(tmp_path / "t.jsonl", [{"id": "a", "rank": 1}, {"id": "b", "rank": 2}, {"id": "c", "rank": 4},
                                        {"id": "d", "rank": None}])
    scanned = write(tmp_path / "s.jsonl", [{"id": "a", "rank": 1}, {"id": "b", "rank": 9}, {"id": "c", "rank": 5},
                                           {"id": "d", "rank": 2}])
    assert load_script(SCRIPT).main(["--questions", str(questions), "--text", str(text), "--scanned", str(scanned)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    groups = {row["group"]: row for row in rows if "group" in row}
    assert groups["all"]["text"] == {"hit@5": 0.75, "mrr": round((1 + 1 / 2 + 1 / 4) / 4, 3)}
    assert groups["all"]["scanned"] == {"hit@5": 0.75, "mrr": round((1 + 1 / 9 + 1 / 5 + 1 / 2) / 4, 3)}
    assert groups["source:pdf/one.pdf"]["gap_hit@5"] == -0.5 and groups["source:pdf/two.pdf"]["gap_hit@5"] == 0.5
    assert groups["lang:en"]["n"] == 1
    assert [(row["id"], "lost" in row) for row in rows if "id" in row] == [("b", True), ("d", False)]


def test_a_question_missing_from_one_side_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = write(tmp_path / "q.jsonl", [{"id": "a", "source": "x"}, {"id": "b", "source": "x"}])
    text = write(tmp_path / "t.jsonl", [{"id": "a", "rank": 1}, {"id": "b", "rank": 1}])
    scanned = write(tmp_path / "s.jsonl", [{"id": "a", "rank": 1}])
    assert load_script(SCRIPT).main(["--questions", str(questions), "--text", str(text), "--scanned", str(scanned)]) == 1
    assert "1 questions are missing from an eval file (first: b)" in capsys.readouterr().err
