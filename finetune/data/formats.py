"""Training-data formats: one JSON record -> ``(role, content)`` turns, and which format a dataset is in.

Formats (JSON arrays or JSONL, UTF-8):

- ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system`` and ``history`` (``[[q, a], ...]``);
  the user turn is ``instruction + "\\n" + input`` as in LLaMA-Factory.
- ``sharegpt``: ``conversations`` of ``{"from": "human"|"gpt"|"system", "value": ...}``, optional ``system``; the
  column, role and content names are configurable (``tags``), so OpenAI-style ``messages`` of
  ``{"role", "content"}`` read too.
- ``advertisegen`` (``content`` -> ``summary``) and ``counselling`` (``Context`` -> ``Response``): alpaca column
  mappings, as ChatGLM3's finetune_demo converts AdvertiseGen.
- ``feedback``: the app's ``feedback/feedback.jsonl``: a thumbs-up answer, or a thumbs-down answer's correction,
  becomes a conversation; the last record per answer id wins (as :func:`rag.feedback.read_feedback`). With
  ``context="quotes"`` the user turn is the app's own answer prompt (:func:`rag.answer.prompt.build_messages`) quoting the
  cited sentences as passages, renumbered with the answer's ``[n]`` markers, so the adapter learns the served format.

A LLaMA-Factory ``dataset_info.json`` (``file_name``, ``formatting``, ``columns``, ``tags``, ``num_samples``) names
datasets, so existing ones work unchanged (:func:`resolve_dataset`).

Why a module of its own: these are the per-format rules, each a pure function of one record (or one
``dataset_info.json`` entry); :mod:`finetune.data.load` does the file reading, validation and bookkeeping around them, so a
new format touches only this file. A converter raises :class:`RecordProblem` for a bad record, which the loader turns
into a :class:`finetune.data.load.BadRecord` with its line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.core.errors import ConfigError
from rag.feedback import RATINGS, answer_key

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
_UNSUPPORTED_COLUMNS = ("tools", "images", "videos", "audios")
PREFERENCE_COLUMNS = ("chosen", "rejected", "kto_tag")  # read by the dpo / kto stages (finetune.data.preference)


class RecordProblem(ValueError):
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
    ranking: bool = False  # dataset_info.json "ranking": true: chosen/rejected pairs (the dpo and kto stages)

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if p.suffix in (".json", ".jsonl"))
        return [self.path]


# --- records -> turns ---------------------------------------------------------------------------------------------


def _text(record: Mapping[str, Any], column: str | None, required: bool) -> str:
    if not column or column not in record or record[column] is None:
        if required:
            raise RecordProblem(f"missing {column!r}")
        return ""
    value = record[column]
    if not isinstance(value, str):
        raise RecordProblem(f"{column!r} must be a string, got {type(value).__name__}")
    return value


def alpaca_turns(record: Mapping[str, Any], columns: Mapping[str, str]) -> list[tuple[str, Any]]:
    """An alpaca record -> (role, content) pairs (history turns first)."""
    prompt = _text(record, columns.get("prompt"), required=True)
    query = _text(record, columns.get("query"), required=False)
    response = _text(record, columns.get("response"), required=True)
    system = _text(record, columns.get("system"), required=False)
    history = record.get(columns.get("history") or "", None) or []
    if not isinstance(history, list) or any(not isinstance(pair, list) or len(pair) != 2 for pair in history):
        raise RecordProblem(f"{columns.get('history')!r} must be a list of [question, answer] pairs")
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
        raise RecordProblem(f"missing {key!r} (a list of turns)")
    role_of = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system",
               tags["observation_tag"]: "observation", tags["function_tag"]: "function_call"}
    system = _text(record, columns.get("system"), required=False)
    turns: list[tuple[str, Any]] = [("system", system)] if system else []
    for index, turn in enumerate(turns_in):
        if not isinstance(turn, dict) or tags["role_tag"] not in turn:
            raise RecordProblem(f"turn {index + 1} of {key!r} has no {tags['role_tag']!r}")
        tag = turn[tags["role_tag"]]
        if not isinstance(tag, str) or tag not in role_of:
            raise RecordProblem(f"turn {index + 1} has unknown role {tag!r}; expected one of {sorted(role_of)} "
                                "(set the dataset's tags in dataset_info.json)")
        if role_of[tag] == "system" and (index > 0 or system):
            raise RecordProblem(f"turn {index + 1} is a system turn; only the first turn may be one")
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
    """The format of a record from its keys; raises RecordProblem when none fits."""
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
    raise RecordProblem(f"cannot tell the format from keys {sorted(keys)}; set the format "
                        f"({', '.join(FORMATS)}) in dataset_info.json or data.format")


def record_turns(record: Any, spec: DatasetSpec, formatting: str) -> list[tuple[str, Any]]:
    if not isinstance(record, dict):
        raise RecordProblem(f"a record must be a JSON object, got {type(record).__name__}")
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
    from rag.answer.cite import parse_citations

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


def feedback_prompt(record: Mapping[str, Any], context: str) -> tuple[list[tuple[str, Any]], dict[int, int] | None]:
    """The prompt turns a feedback record's answer was served with, and how to renumber a reply's ``[n]`` markers
    for it (None: strip them). With ``context="quotes"`` and quoted citations the user turn is the app's own answer
    prompt (:func:`rag.answer.prompt.build_messages`) quoting the cited sentences as passages; else the bare question.
    Shared by SFT (:func:`feedback_turns`) and the preference stages (:mod:`finetune.data.preference`)."""
    if not isinstance(record, Mapping):
        raise RecordProblem(f"a feedback record must be a JSON object, not {type(record).__name__}")
    question = _text(record, "question", required=True)
    citations = record.get("citations") or []
    if not isinstance(citations, list) or any(not isinstance(c, dict) for c in citations):
        raise RecordProblem("'citations' must be a list of objects")
    quoted = sorted({int(c["number"]): c for c in citations
                     if isinstance(c.get("number"), int) and str(c.get("quote") or "").strip()}.items())
    if context == "none" or not quoted:
        return [("user", question)], None
    from rag.answer.prompt import build_messages
    from rag.core.config import AnswerConfig
    from rag.core.types import Chunk, Hit

    hits = [Hit(Chunk(id=n, text=str(c["quote"]), source=str(c.get("source") or ""), position=0,
                      page=c.get("page") if isinstance(c.get("page"), int) else None), score=1.0)
            for n, c in quoted]
    budget = AnswerConfig(context_tokens=1 << 30, history_tokens=0)  # the quotes are short: keep them all
    prompt = build_messages(question, hits, [], budget, count_tokens=len)
    mapping = {number: new for new, (number, _) in enumerate(quoted, start=1)}
    return [(str(m.role), m.content) for m in prompt.messages], mapping


def feedback_reply(text: str, mapping: dict[int, int] | None) -> str:
    """An answer or correction as the assistant turn for :func:`feedback_prompt`'s prompt."""
    from rag.answer.cite import strip_citations

    return strip_citations(text) if mapping is None else _renumber(text, mapping)


def feedback_rating(record: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(rating, answer, correction)`` of a feedback record, checked."""
    if not isinstance(record, Mapping):
        raise RecordProblem(f"a feedback record must be a JSON object, not {type(record).__name__}")
    rating = record.get("rating")
    if rating not in RATINGS:
        raise RecordProblem(f"rating={rating!r} must be one of {', '.join(RATINGS)}")
    _text(record, "question", required=True)
    answer = _text(record, "answer", required=rating == "up")
    return str(rating), answer, _text(record, "correction", required=False).strip()


def feedback_turns(record: Mapping[str, Any], context: str) -> list[tuple[str, Any]] | None:
    """A feedback record -> turns, or None when it is a thumbs-down without a correction (nothing to learn)."""
    rating, answer, correction = feedback_rating(record)
    if rating == "down" and not correction:
        return None
    turns, mapping = feedback_prompt(record, context)
    return [*turns, ("assistant", feedback_reply(answer if rating == "up" else correction, mapping))]


def latest_feedback(rows: list[tuple[int, Any, str]]) -> list[tuple[int, Any, str]]:
    """The last record per answer id (records without an id all kept), in file order of their last write."""
    latest: dict[str, tuple[int, Any, str]] = {}
    for line, record, error in rows:
        key = answer_key(record, line) if not error else f"#{line}"
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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"{path} nests objects or lists too deeply to be a dataset_info.json") from None
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
    formatting = str(entry.get("formatting", "alpaca"))
    if formatting not in FORMATS:
        raise ConfigError(f"{where} has formatting {formatting!r}; expected one of {', '.join(FORMATS)}")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise ConfigError(f"{where}: columns and tags must be objects")
    unsupported = [key for key in _UNSUPPORTED_COLUMNS if columns.get(key)]
    if unsupported:
        raise ConfigError(f"{where} maps {unsupported}; tool calls and images are not supported")
    if not entry.get("file_name"):
        raise ConfigError(f"{where} has no file_name")
    path = root / str(entry["file_name"])
    if not path.exists():
        raise ConfigError(f"{where}: file {path} not found")
    num_samples = entry.get("num_samples") or 0
    if isinstance(num_samples, str) and num_samples.strip().isdigit():
        num_samples = int(num_samples)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise ConfigError(f"{where} has num_samples={num_samples!r}; it must be a whole number >= 0 (0 = all records)")
    return DatasetSpec(name, path, formatting, {str(k): str(v) for k, v in columns.items()},
                       {str(k): str(v) for k, v in tags.items()}, num_samples, bool(entry.get("ranking")))
