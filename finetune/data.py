"""Training data -> validated conversations (tuples of :class:`rag.types.Message`), each tagged with its file and line.

Formats (JSON arrays or JSONL, UTF-8):

- ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system`` and ``history`` (``[[q, a], ...]``);
  the user turn is ``instruction + "\\n" + input`` as in LLaMA-Factory.
- ``sharegpt``: ``conversations`` of ``{"from": "human"|"gpt"|"system", "value": ...}``, optional ``system``; the
  column, role and content names are configurable (``tags``), so OpenAI-style ``messages`` of
  ``{"role", "content"}`` read too.
- ``advertisegen`` (``content`` -> ``summary``) and ``counselling`` (``Context`` -> ``Response``): alpaca column
  mappings, as ChatGLM3's finetune_demo converts AdvertiseGen.
- ``feedback``: the app's ``feedback/feedback.jsonl``: a thumbs-up answer, or a thumbs-down answer's correction,
  becomes a conversation; the last record per answer id wins (as :func:`rag.kb.read_feedback`). With
  ``context="quotes"`` the user turn is the app's own answer prompt (:func:`rag.prompt.build_messages`) quoting the
  cited sentences as passages, renumbered with the answer's ``[n]`` markers, so the adapter learns the served format.

A LLaMA-Factory ``dataset_info.json`` (``file_name``, ``formatting``, ``columns``, ``tags``, ``num_samples``) names
datasets, so existing ones work unchanged. Every record becomes one conversation or one :class:`BadRecord` with its
line number: ``on_bad_record="error"`` raises :class:`DataError` listing them, ``"skip"`` logs each one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from rag.errors import ConfigError, RagError
from rag.types import Message, Role

logger = logging.getLogger(__name__)

DATASET_INFO = "dataset_info.json"
FORMATS = ("alpaca", "sharegpt", "advertisegen", "counselling", "feedback")
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                  "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system", "observation_tag": "observation", "function_tag": "function_call"}
OPENAI_TAGS = {**SHAREGPT_TAGS, "role_tag": "role", "content_tag": "content", "user_tag": "user",
               "assistant_tag": "assistant"}
PRESETS = {  # converters that are column mappings onto alpaca
    "advertisegen": {"prompt": "content", "response": "summary"},
    "counselling": {"prompt": "Context", "response": "Response"},
}
_UNSUPPORTED_ENTRY_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_UNSUPPORTED_COLUMNS = ("tools", "images", "videos", "audios", "chosen", "rejected", "kto_tag")
_MAX_LISTED = 20


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


class _Problem(ValueError):
    """Why one record is bad (becomes a BadRecord with its line)."""


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: a local file (or folder of files) and how to read its records."""

    name: str
    path: Path
    formatting: str
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    num_samples: int = 0  # 0 = all

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if p.suffix in (".json", ".jsonl"))
        return [self.path]


@dataclass
class LoadResult:
    """Conversations read from some datasets, and what did not make it (with line numbers)."""

    conversations: list[Conversation] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    skipped: list[BadRecord] = field(default_factory=list)  # deliberate: thumbs-down feedback without a correction
    files: list[Path] = field(default_factory=list)

    def sha256(self) -> str:
        """Hash of the files' bytes, in order: recorded in rag_adapter.json to say exactly what was trained on."""
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()


# --- reading records with their line numbers ----------------------------------------------------------------------


def read_records(path: Path) -> Iterator[tuple[int, Any, str]]:
    """``(line, record, "")`` for each record of a JSON array or JSONL file, ``(line, None, reason)`` for a line that
    is not JSON. A broken JSON array stops at the error (its line is reported)."""
    text = path.read_text(encoding="utf-8-sig")
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "[":
        yield from _array_items(text, start + 1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line), ""
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"


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
            raise _Problem(f"turn {index + 1} has role {role!r}; tool and observation turns are not supported")
        if not isinstance(content, str):
            raise _Problem(f"turn {index + 1} ({role}) content must be a string, got {type(content).__name__}")
        if not content.strip():
            if role == "system":
                continue
            raise _Problem(f"turn {index + 1} ({role}) is empty")
        messages.append(Message(cast(Role, role), content.strip()))
    body = messages[1:] if messages and messages[0].role == "system" else messages
    if not body:
        raise _Problem("no user or assistant turn")
    for index, message in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.role != expected:
            raise _Problem(f"turn {index + 1 + len(messages) - len(body)} is {message.role}, expected {expected} "
                           "(a system turn first, then user and assistant alternating)")
    if body[-1].role != "assistant":
        raise _Problem("the last turn must be the assistant's answer")
    return tuple(messages)


def _text(record: Mapping[str, Any], column: str | None, required: bool) -> str:
    if not column or column not in record or record[column] is None:
        if required:
            raise _Problem(f"missing {column!r}")
        return ""
    value = record[column]
    if not isinstance(value, str):
        raise _Problem(f"{column!r} must be a string, got {type(value).__name__}")
    return value


def alpaca_turns(record: Mapping[str, Any], columns: Mapping[str, str]) -> list[tuple[str, Any]]:
    """An alpaca record -> (role, content) pairs (history turns first)."""
    prompt = _text(record, columns.get("prompt"), required=True)
    query = _text(record, columns.get("query"), required=False)
    response = _text(record, columns.get("response"), required=True)
    system = _text(record, columns.get("system"), required=False)
    history = record.get(columns.get("history") or "", None) or []
    if not isinstance(history, list) or any(not isinstance(pair, list) or len(pair) != 2 for pair in history):
        raise _Problem(f"{columns.get('history')!r} must be a list of [question, answer] pairs")
    turns: list[tuple[str, Any]] = [("system", system)] if system else []
    for question, answer in history:
        turns += [("user", question), ("assistant", answer)]
    user = f"{prompt.strip()}\n{query.strip()}" if query.strip() else prompt
    return [*turns, ("user", user), ("assistant", response)]


def sharegpt_turns(record: Mapping[str, Any], columns: Mapping[str, str],
                   tags: Mapping[str, str]) -> list[tuple[str, Any]]:
    """A sharegpt record -> (role, content) pairs, role names mapped through ``tags``."""
    key = columns.get("messages", "conversations")
    turns_in = record.get(key)
    if not isinstance(turns_in, list):
        raise _Problem(f"missing {key!r} (a list of turns)")
    role_of = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system",
               tags["observation_tag"]: "observation", tags["function_tag"]: "function_call"}
    system = _text(record, columns.get("system"), required=False)
    turns: list[tuple[str, Any]] = [("system", system)] if system else []
    for index, turn in enumerate(turns_in):
        if not isinstance(turn, dict) or tags["role_tag"] not in turn:
            raise _Problem(f"turn {index + 1} of {key!r} has no {tags['role_tag']!r}")
        tag = turn[tags["role_tag"]]
        if not isinstance(tag, str) or tag not in role_of:
            raise _Problem(f"turn {index + 1} has unknown role {tag!r}; expected one of {sorted(role_of)} "
                           "(set the dataset's tags in dataset_info.json)")
        if role_of[tag] == "system" and (index > 0 or system):
            raise _Problem(f"turn {index + 1} is a system turn; only the first turn may be one")
        turns.append((role_of[tag], turn.get(tags["content_tag"])))
    return turns


def _sharegpt_tags(record: Any, tags: Mapping[str, str]) -> dict[str, str]:
    """Explicit tags win; else OpenAI-style (role/content) when the first turn says so, else sharegpt's defaults."""
    if tags:
        return {**SHAREGPT_TAGS, **tags}
    turns = record.get("messages") or record.get("conversations") if isinstance(record, dict) else None
    first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
    return dict(OPENAI_TAGS if "role" in first else SHAREGPT_TAGS)


def detect_format(record: Any) -> str:
    """The format of a record from its keys; raises _Problem when none fits."""
    keys = set(record) if isinstance(record, dict) else set()
    if "conversations" in keys or "messages" in keys:
        return "sharegpt"
    if "instruction" in keys:
        return "alpaca"
    if {"content", "summary"} <= keys:
        return "advertisegen"
    if {"Context", "Response"} <= keys:
        return "counselling"
    if {"question", "rating"} <= keys:
        return "feedback"
    raise _Problem(f"cannot tell the format from keys {sorted(keys)}; set the format "
                   f"({', '.join(FORMATS)}) in dataset_info.json or data.format")


def record_turns(record: Any, spec: DatasetSpec, formatting: str) -> list[tuple[str, Any]]:
    if not isinstance(record, dict):
        raise _Problem(f"a record must be a JSON object, got {type(record).__name__}")
    if formatting == "sharegpt":
        columns = {**SHAREGPT_COLUMNS, **spec.columns}
        if "messages" not in spec.columns and "messages" in record and "conversations" not in record:
            columns["messages"] = "messages"
        return sharegpt_turns(record, columns, _sharegpt_tags(record, spec.tags))
    if formatting in PRESETS:
        return alpaca_turns(record, {**PRESETS[formatting], **spec.columns})
    return alpaca_turns(record, {**ALPACA_COLUMNS, **spec.columns})


# --- the app's feedback ------------------------------------------------------------------------------------------


def _renumber(text: str, mapping: Mapping[int, int]) -> str:
    """Rewrite the ``[n]`` markers of ``text`` through ``mapping``; numbers not in it are dropped (with the bracket
    and the spaces before it when none is left)."""
    from rag.cite import parse_citations

    spans: dict[tuple[int, int], list[int]] = {}
    for marker in parse_citations(text):
        spans.setdefault((marker.start, marker.end), []).append(marker.number)
    out, last = [], 0
    for (start, end), numbers in spans.items():
        kept = [mapping[n] for n in numbers if n in mapping]
        out.append(text[last:start] if kept else text[last:start].rstrip(" \t"))
        out.append("".join(f"[{n}]" for n in kept))
        last = end
    out.append(text[last:])
    return "".join(out)


def feedback_turns(record: Mapping[str, Any], context: str) -> list[tuple[str, Any]] | None:
    """A feedback record -> turns, or None when it is a thumbs-down without a correction (nothing to learn)."""
    from rag.cite import strip_citations

    if not isinstance(record, Mapping):
        raise _Problem(f"a feedback record must be a JSON object, not {type(record).__name__}")

    rating = record.get("rating")
    if rating not in ("up", "down"):
        raise _Problem(f"rating={rating!r} must be 'up' or 'down'")
    question = _text(record, "question", required=True)
    answer = _text(record, "answer", required=rating == "up")
    correction = _text(record, "correction", required=False).strip()
    if rating == "down" and not correction:
        return None
    target = answer if rating == "up" else correction
    citations = record.get("citations") or []
    if not isinstance(citations, list) or any(not isinstance(c, dict) for c in citations):
        raise _Problem("'citations' must be a list of objects")
    quoted = sorted({int(c["number"]): c for c in citations
                     if isinstance(c.get("number"), int) and str(c.get("quote") or "").strip()}.items())
    if context == "none" or not quoted:
        return [("user", question), ("assistant", strip_citations(target))]
    from rag.config import AnswerConfig
    from rag.prompt import build_messages
    from rag.types import Chunk, Hit

    hits = [Hit(Chunk(id=n, text=str(c["quote"]), source=str(c.get("source") or ""), position=0,
                      page=c.get("page") if isinstance(c.get("page"), int) else None), score=1.0)
            for n, c in quoted]
    budget = AnswerConfig(context_tokens=1 << 30, history_tokens=0)  # the quotes are short: keep them all
    prompt = build_messages(question, hits, [], budget, count_tokens=len)
    mapping = {number: new for new, (number, _) in enumerate(quoted, start=1)}
    return [(str(m.role), m.content) for m in prompt.messages] + [("assistant", _renumber(target, mapping))]


def _latest_feedback(rows: list[tuple[int, Any, str]]) -> list[tuple[int, Any, str]]:
    """The last record per answer id (records without an id all kept), in file order of their last write."""
    latest: dict[str, tuple[int, Any, str]] = {}
    for line, record, error in rows:
        key = str(record.get("id") or f"#{line}") if isinstance(record, dict) and not error else f"#{line}"
        latest.pop(key, None)
        latest[key] = (line, record, error)
    return list(latest.values())


# --- datasets -----------------------------------------------------------------------------------------------------


def load_dataset_info(dataset_dir: Path) -> dict[str, Any]:
    path = dataset_dir / DATASET_INFO
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise ConfigError(f"{path} must hold an object of dataset entries")
    return info


def resolve_dataset(name: str, dataset_dir: str | Path, fmt: str = "auto") -> DatasetSpec:
    """A name in ``<dataset_dir>/dataset_info.json`` or a file path (absolute, relative to the working directory, or
    to ``dataset_dir``) -> its :class:`DatasetSpec`.

    Raises:
        ConfigError: an unknown name, an entry this project can't read (hub / script datasets, preference data,
            tools or images), or a missing file.
    """
    root = Path(dataset_dir).expanduser()
    info = load_dataset_info(root)
    if name in info:
        return _spec_from_entry(name, info[name], root)
    for candidate in (Path(name).expanduser(), root / name):
        if candidate.is_file() or candidate.is_dir():
            if fmt != "auto" and fmt not in FORMATS:
                raise ConfigError(f"data.format={fmt!r} is not one of auto, {', '.join(FORMATS)}")
            return DatasetSpec(name, candidate, fmt)
    names = ", ".join(sorted(info)) or "none"
    raise ConfigError(f"dataset {name!r} is neither a file nor a name in {root / DATASET_INFO} (names: {names})")


def _spec_from_entry(name: str, entry: Any, root: Path) -> DatasetSpec:
    where = f"{root / DATASET_INFO} entry {name!r}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object")
    remote = [key for key in _UNSUPPORTED_ENTRY_KEYS if entry.get(key)]
    if remote and not entry.get("file_name"):
        raise ConfigError(f"{where} uses {remote[0]}; only local files are read here: download the data and set "
                          "file_name")
    if entry.get("ranking"):
        raise ConfigError(f"{where} is preference (ranking) data; this recipe does supervised fine-tuning only")
    formatting = str(entry.get("formatting", "alpaca"))
    if formatting not in FORMATS:
        raise ConfigError(f"{where} has formatting {formatting!r}; expected one of {', '.join(FORMATS)}")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise ConfigError(f"{where}: columns and tags must be objects")
    unsupported = [key for key in _UNSUPPORTED_COLUMNS if columns.get(key)]
    if unsupported:
        raise ConfigError(f"{where} maps {unsupported}; tool calls, images and preference columns are not supported")
    if not entry.get("file_name"):
        raise ConfigError(f"{where} has no file_name")
    path = root / str(entry["file_name"])
    if not path.exists():
        raise ConfigError(f"{where}: file {path} not found")
    return DatasetSpec(name, path, formatting, {str(k): str(v) for k, v in columns.items()},
                       {str(k): str(v) for k, v in tags.items()}, int(entry.get("num_samples") or 0))


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
                except _Problem as exc:
                    result.bad.append(BadRecord(str(path), rows[0][0] if rows else 1, str(exc)))
                    continue
            if formatting == "feedback":
                rows = _latest_feedback(rows)
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
                except _Problem as exc:
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


def split_dev(conversations: Sequence[Conversation], ratio: float, max_samples: int,
              seed: int) -> tuple[list[Conversation], list[Conversation]]:
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
