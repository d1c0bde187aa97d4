"""Training data -> validated conversations (tuples of :class:`rag.core.types.Message`), each tagged with its file and line.

Each dataset (:class:`finetune.data.formats.DatasetSpec`, usually from :func:`finetune.data.formats.resolve_dataset`) is read
record by record with line numbers, converted by its format's rules (:mod:`finetune.data.formats`: alpaca, sharegpt,
advertisegen, counselling, feedback) and validated here into one conversation or one :class:`BadRecord` with its line
number: ``on_bad_record="error"`` raises :class:`DataError` listing them, ``"skip"`` logs each one. The hash of the
files read and the seeded dev split are here too, so what a run trained on is recorded in one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from finetune.config import FinetuneConfig
from finetune.data.formats import (
    DatasetSpec,
    RecordProblem,
    detect_format,
    feedback_turns,
    latest_feedback,
    record_turns,
    resolve_dataset,
)
from rag.core.errors import ConfigError, RagError
from rag.core.jsonl import TOO_DEEP, parse_json_lines, utf8_problem
from rag.core.types import Message, Role

logger = logging.getLogger(__name__)

_MAX_LISTED = 20
Example = TypeVar("Example")  # a Conversation, or a preference stage's pair / judgement


@dataclass(frozen=True)
class Conversation:
    """One training example: system? then user/assistant turns alternating, ending with an assistant turn."""

    messages: tuple[Message, ...]
    source: str  # "file:line"


@dataclass(frozen=True)
class BadRecord:
    """A record that could not become a conversation, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class DataError(RagError):
    """Bad records in the training data (``records`` lists them all; the message shows the first ones)."""

    def __init__(self, records: Sequence[BadRecord]) -> None:
        shown = "\n  ".join(str(r) for r in records[:_MAX_LISTED])
        more = f"\n  ... and {len(records) - _MAX_LISTED} more" if len(records) > _MAX_LISTED else ""
        super().__init__(f"{len(records)} bad record(s); fix them or set data.on_bad_record=skip:\n  {shown}{more}")
        self.records = list(records)


@dataclass
class LoadResult:
    """Conversations read from some datasets, and what did not make it (with line numbers)."""

    conversations: list[Conversation] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    skipped: list[BadRecord] = field(default_factory=list)  # deliberate: thumbs-down feedback without a correction
    files: list[Path] = field(default_factory=list)

    def sha256(self) -> str:
        return files_sha256(self.files)


def files_sha256(files: Sequence[Path]) -> str:
    """Hash of the files' bytes, in order: recorded in rag_adapter.json to say exactly what was trained on."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# --- reading records with their line numbers ----------------------------------------------------------------------


def read_records(path: Path) -> Iterator[tuple[int, Any, str]]:
    """``(line, record, "")`` for each record of a JSON array or JSONL file, ``(line, None, reason)`` for a line that
    is not JSON, not UTF-8 or nested too deeply to decode (:mod:`rag.core.jsonl`). A broken JSON array stops at the
    error (its line is reported)."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM
    start = len(data) - len(data.lstrip())
    if data[start:start + 1] != b"[":
        yield from parse_json_lines(data)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # one array: a bad byte anywhere stops it, at that byte's line
        yield data.count(b"\n", 0, exc.start) + 1, None, utf8_problem(data, exc) + "; the array was not read"
        return
    yield from _array_items(text, start + 1)


def _array_items(text: str, pos: int) -> Iterator[tuple[int, Any, str]]:
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    pos = skip(pos)
    if text[pos:pos + 1] == "]":
        return
    while pos < len(text):
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield exc.lineno, None, f"not valid JSON ({exc.msg}); the rest of the array was not read"
            return
        except RecursionError:
            yield line, None, f"{TOO_DEEP}; the rest of the array was not read"
            return
        yield line, value, ""
        pos = skip(pos)
        if text[pos:pos + 1] == ",":
            pos = skip(pos + 1)
        elif text[pos:pos + 1] == "]":
            return
        else:
            line += text.count("\n", counted, pos)
            yield line, None, "expected ',' or ']' after a record; the rest of the array was not read"
            return


# --- records -> conversations ------------------------------------------------------------------------------------


def validate(turns: Sequence[tuple[str, Any]]) -> tuple[Message, ...]:
    """``(role, content)`` pairs -> messages: optional system first, then user/assistant alternating from a user turn
    to an assistant turn, every content a non-empty string (stripped: edge whitespace would merge with the template's
    own and make training ids differ from serving ids)."""
    messages = []
    for index, (role, content) in enumerate(turns):
        if role not in ("system", "user", "assistant"):
            raise RecordProblem(f"turn {index + 1} has role {role!r}; tool and observation turns are not supported")
        if not isinstance(content, str):
            raise RecordProblem(f"turn {index + 1} ({role}) content must be a string, got {type(content).__name__}")
        if not content.strip():
            if role == "system":
                continue
            raise RecordProblem(f"turn {index + 1} ({role}) is empty")
        messages.append(Message(cast(Role, role), content.strip()))
    body = messages[1:] if messages and messages[0].role == "system" else messages
    if not body:
        raise RecordProblem("no user or assistant turn")
    for index, message in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.role != expected:
            raise RecordProblem(f"turn {index + 1 + len(messages) - len(body)} is {message.role}, expected {expected} "
                                "(a system turn first, then user and assistant alternating)")
    if body[-1].role != "assistant":
        raise RecordProblem("the last turn must be the assistant's answer")
    return tuple(messages)


# --- datasets -> checked conversations, dev split -----------------------------------------------------------------


def load_conversations(specs: Sequence[DatasetSpec], system: str = "", feedback_context: str = "quotes",
                       max_samples: int = 0) -> LoadResult:
    """Read every record of ``specs`` into conversations; bad records are collected, not raised (see :func:`check`).

    Args:
        specs: the datasets, read in order.
        system: a system prompt for conversations without one ("" = none).
        feedback_context: ``quotes`` or ``none`` (see the module docstring).
        max_samples: stop after this many conversations in all (0 = all).
    """
    result = LoadResult()
    for spec in specs:
        taken = 0
        for path in spec.files():
            result.files.append(path)
            rows = list(read_records(path))
            formatting = spec.formatting
            if formatting == "auto":
                first = next((record for _, record, error in rows if not error), None)
                try:
                    formatting = detect_format(first)
                except RecordProblem as exc:
                    result.bad.append(BadRecord(str(path), rows[0][0] if rows else 1, str(exc)))
                    continue
            if formatting == "feedback":
                rows = latest_feedback(rows)
            for line, record, error in rows:
                if error:
                    result.bad.append(BadRecord(str(path), line, error))
                    continue
                try:
                    turns = (feedback_turns(record, feedback_context) if formatting == "feedback"
                             else record_turns(record, spec, formatting))
                    if turns is None:
                        result.skipped.append(BadRecord(str(path), line, "thumbs-down without a correction"))
                        continue
                    if system and not any(role == "system" for role, _ in turns):
                        turns = [("system", system), *turns]
                    messages = validate(turns)
                except RecordProblem as exc:
                    result.bad.append(BadRecord(str(path), line, str(exc)))
                    continue
                result.conversations.append(Conversation(messages, f"{path}:{line}"))
                taken += 1
                if spec.num_samples and taken >= spec.num_samples:
                    break
                if max_samples and len(result.conversations) >= max_samples:
                    return result
            if spec.num_samples and taken >= spec.num_samples:
                break
    return result


def check(result: LoadResult, on_bad_record: str = "error") -> LoadResult:
    """Raise :class:`DataError` on bad records (``error``), or log each one (``skip``); log skipped feedback."""
    if result.bad and on_bad_record == "error":
        raise DataError(result.bad)
    for record in result.bad:
        logger.warning("skipped bad record %s", record)
    if result.skipped:
        logger.info("%d feedback record(s) skipped: thumbs-down without a correction", len(result.skipped))
    if not result.conversations:
        raise ConfigError("the datasets hold no usable conversation")
    return result


def split_dev(conversations: Sequence[Example], ratio: float, max_samples: int,
              seed: int) -> tuple[list[Example], list[Example]]:
    """(train, dev): a seeded random ``ratio`` of the conversations (at most ``max_samples``, at least one when the
    ratio is positive and two or more conversations exist) is held out; order is kept within each part."""
    count = len(conversations)
    size = min(max(1, round(count * ratio)), max_samples, count - 1) if ratio > 0 and count > 1 else 0
    held = set(random.Random(seed).sample(range(count), size))
    train = [c for i, c in enumerate(conversations) if i not in held]
    dev = [c for i, c in enumerate(conversations) if i in held]
    return train, dev


def to_jsonl_record(conversation: Conversation) -> dict[str, Any]:
    """The OpenAI-style ``{"messages": [{"role", "content"}, ...]}`` record (read back as sharegpt)."""
    return {"messages": [{"role": m.role, "content": m.content} for m in conversation.messages]}


def load_splits(cfg: FinetuneConfig) -> tuple[list[Conversation], list[Conversation], dict[str, Any]]:
    """(train, dev, description for rag_adapter.json) from ``cfg.data``."""
    data = cfg.data

    def read(names: Sequence[str], max_samples: int) -> Any:
        specs = [resolve_dataset(name, data.dataset_dir, data.format) for name in names]
        for spec in specs:
            if spec.ranking or "kto_tag" in spec.columns:
                raise ConfigError(f"dataset {spec.name!r} is preference data (ranking / kto_tag); train it with "
                                  "stage=dpo or stage=kto")
        return check(load_conversations(specs, data.system, data.feedback_context, max_samples), data.on_bad_record)

    loaded = read(data.datasets, data.max_samples)
    if data.dev_datasets:
        train, dev = loaded.conversations, read(data.dev_datasets, 0).conversations
    else:
        train, dev = split_dev(loaded.conversations, data.dev_ratio, data.dev_max_samples, cfg.seed)
    described = {"dataset": ",".join(data.datasets), "dataset_sha256": loaded.sha256(),
                 "dataset_files": [str(p) for p in loaded.files], "bad_records_skipped": len(loaded.bad)}
    return train, dev, described
