"""Answer feedback: one :class:`FeedbackRecord` a line in a JSONL file, appended under a file lock.

The chat page appends a record per thumbs up/down (and again when the user adds a correction, with the same ``id``:
the last record of an id wins). ``finetune/`` turns the file into training data, so the record's fields are a
contract between the two: this module is the one place both sides read it from (the page through
:mod:`rag.webui.chat`, finetune through :mod:`finetune.data.formats`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from rag.core.jsonl import json_lines

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedbackCitation:
    number: int
    source: str
    page: int | None
    quote: str


@dataclass(frozen=True)
class FeedbackRecord:
    """One line of ``feedback.jsonl``: a rated answer, with the user's correction if they wrote one.

    Attributes:
        time: ISO 8601 local time with offset.
        question: what the user asked.
        answer: the answer shown (citations as ``[n]``).
        rating: ``up`` or ``down``.
        correction: what the answer should have said ("" if none).
        citations: the answer's citations with the supporting sentence.
        model: the model that answered (``model_id + adapter``).
        adapter: the LoRA adapter ("" = the base model).
        id: the answer's id; a later record with the same id replaces the earlier.
        index: the index folder the answer came from.
    """

    time: str
    question: str
    answer: str
    rating: str
    correction: str = ""
    citations: list[FeedbackCitation] = field(default_factory=list)
    model: str = ""
    adapter: str = ""
    id: str = ""
    index: str = ""


RATINGS = ("up", "down")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def append_feedback(path: str | Path, record: FeedbackRecord) -> None:
    """Append ``record`` as one JSON line (UTF-8, not ASCII-escaped), safely across threads and processes."""
    if record.rating not in RATINGS:
        raise ValueError(f"rating={record.rating!r} must be one of {', '.join(RATINGS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n"
    with FileLock(str(path) + ".lock"), open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def answer_key(record: Any, line: int) -> str:
    """The key that later records about the same answer share: its ``id``, or the line number when it has none (or
    the line is not a record at all)."""
    return str(record.get("id") or f"#{line}") if isinstance(record, dict) else f"#{line}"


def read_feedback(path: str | Path) -> list[dict[str, Any]]:
    """The feedback records in ``path``, the last one per id (records without an id all kept), oldest first."""
    path = Path(path)
    if not path.is_file():
        return []
    latest: dict[str, dict[str, Any]] = {}
    for number, record, problem in json_lines(path):
        if problem or not isinstance(record, dict):  # a line torn by a crash, or edited by hand: skipped, said
            logger.warning("%s:%d: skipped: %s", path, number, problem or "not a JSON object")
            continue
        key = answer_key(record, number)
        latest.pop(key, None)  # re-insert: the order is the last write's
        latest[key] = record
    return list(latest.values())
