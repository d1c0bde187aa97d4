"""Preference data for the ``dpo`` and ``kto`` stages: records -> :class:`PreferencePair` / :class:`Judgement`.

Read (JSON arrays or JSONL, line numbers kept, bad records collected exactly like the SFT loader's):

- ``dataset_info.json`` entries with ``"ranking": true``, as LLaMA-Factory writes them: alpaca records whose
  ``output`` is ``[chosen, rejected]`` (or with ``chosen`` / ``rejected`` columns), sharegpt records whose
  ``conversations`` end with the user turn and whose ``chosen`` / ``rejected`` are one assistant turn each;
- plain files of ``{"prompt", "chosen", "rejected"}`` (TRL's preference layout; ``prompt`` a string or a list of
  ``{"role", "content"}`` turns, each answer a string or such a turn) and KTO's unpaired
  ``{"prompt", "completion", "label"}``; an alpaca / sharegpt entry with a ``kto_tag`` column (a bool per record);
- the page's feedback file (:mod:`rag.feedback`): the prompt is the served RAG prompt with the cited passages
  (:func:`finetune.data.formats.feedback_prompt`, as SFT uses). ``kto``: 👍 -> the answer is desirable, 👎 -> the
  answer is undesirable and its correction, if any, desirable. ``dpo``: a 👎 with a correction -> (chosen =
  correction, rejected = answer); other feedback has nothing to pair and is skipped (counted, with the reason).

For ``kto`` every pair also gives two judgements (chosen desirable, rejected undesirable), as TRL's unpairing does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import FinetuneConfig
from finetune.data.formats import (
    ALPACA_COLUMNS,
    PRESETS,
    SHAREGPT_COLUMNS,
    DatasetSpec,
    RecordProblem,
    feedback_prompt,
    feedback_rating,
    feedback_reply,
    latest_feedback,
    record_turns,
    resolve_dataset,
)
from finetune.data.load import BadRecord, DataError, files_sha256, read_records, split_dev, validate
from rag.core.errors import ConfigError
from rag.core.types import Message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePair:
    """One prompt (system? user/assistant turns ending with a user turn) with a better and a worse answer."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str  # "file:line"


@dataclass(frozen=True)
class Judgement:
    """One prompt and one answer marked desirable or not (KTO's unpaired example)."""

    prompt: tuple[Message, ...]
    completion: str
    desirable: bool
    source: str


@dataclass
class PreferenceData:
    """What some datasets gave a preference stage, and what they did not (with line numbers)."""

    pairs: list[PreferencePair] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    skipped: list[BadRecord] = field(default_factory=list)  # deliberate: nothing this stage can learn from
    files: list[Path] = field(default_factory=list)

    def sha256(self) -> str:
        return files_sha256(self.files)

    def examples(self, stage: str) -> int:
        return len(self.pairs) if stage == "dpo" else len(self.judgements)

    def counts(self) -> dict[str, int]:
        """Used and skipped, by kind: printed after training and recorded in rag_adapter.json."""
        out = ({"pairs": len(self.pairs)} if self.pairs else
               {"desirable": sum(j.desirable for j in self.judgements),
                "undesirable": sum(not j.desirable for j in self.judgements)})
        out["bad_records"] = len(self.bad)
        for record in self.skipped:
            key = f"skipped: {record.reason}"
            out[key] = out.get(key, 0) + 1
        return out


# --- one record ---------------------------------------------------------------------------------------------------


def _answer(value: Any, what: str) -> str:
    """An answer given as a string, a ``{"role"/"from", "content"/"value"}`` turn, or a list ending with one."""
    if isinstance(value, list) and value:
        value = value[-1]
    if isinstance(value, Mapping):
        value = value.get("content", value.get("value"))
    if not isinstance(value, str) or not value.strip():
        raise RecordProblem(f"{what!r} must be a non-empty string (or an assistant turn)")
    return value


def _prompt_turns(value: Any) -> list[tuple[str, Any]]:
    """TRL's ``prompt``: a string (one user turn) or a list of ``{"role", "content"}`` turns."""
    if isinstance(value, str):
        return [("user", value)]
    if isinstance(value, list) and all(isinstance(t, Mapping) and "role" in t for t in value):
        return [(str(t["role"]), t.get("content")) for t in value]
    raise RecordProblem("'prompt' must be a string or a list of {\"role\", \"content\"} turns")


def _prompt(turns: list[tuple[str, Any]], answer: str) -> tuple[Message, ...]:
    """Validated prompt messages: the turns with ``answer`` appended must be a valid conversation."""
    return validate([*turns, ("assistant", answer)])[:-1]


def pair_from_record(record: Any, spec: DatasetSpec, formatting: str) -> tuple[list[tuple[str, Any]], str, str]:
    """A ranking record -> (prompt turns, chosen, rejected)."""
    if not isinstance(record, Mapping):
        raise RecordProblem(f"a record must be a JSON object, got {type(record).__name__}")
    columns = spec.columns
    if formatting == "sharegpt":
        key = columns.get("messages", SHAREGPT_COLUMNS["messages"] if "conversations" in record else "messages")
        chosen = _answer(record.get(columns.get("chosen", "chosen")), "chosen")
        rejected = _answer(record.get(columns.get("rejected", "rejected")), "rejected")
        stub = {**record, key: [*(record.get(key) or []), {"from": "gpt", "value": chosen,
                                                          "role": "assistant", "content": chosen}]}
        return record_turns(stub, spec, "sharegpt")[:-1], chosen, rejected
    if formatting in ("alpaca", *PRESETS):
        names = {**ALPACA_COLUMNS, **PRESETS.get(formatting, {}), **columns}
        if "chosen" in names:
            chosen, rejected = _answer(record.get(names["chosen"]), "chosen"), _answer(
                record.get(names["rejected"]), "rejected")
        else:
            both = record.get(names["response"])
            if not isinstance(both, list) or len(both) != 2:
                raise RecordProblem(f"{names['response']!r} must be [chosen, rejected] in ranking data")
            chosen, rejected = _answer(both[0], "chosen"), _answer(both[1], "rejected")
        stub = {**record, names["response"]: chosen}
        return record_turns(stub, spec, formatting)[:-1], chosen, rejected
    if formatting == "preference":
        return (_prompt_turns(record.get("prompt")), _answer(record.get("chosen"), "chosen"),
                _answer(record.get("rejected"), "rejected"))
    raise RecordProblem(f"formatting {formatting!r} holds no preference pairs")


def judgement_from_record(record: Any, spec: DatasetSpec, formatting: str) -> tuple[list[tuple[str, Any]], str, bool]:
    """A KTO record -> (prompt turns, completion, desirable)."""
    if not isinstance(record, Mapping):
        raise RecordProblem(f"a record must be a JSON object, got {type(record).__name__}")
    if formatting == "kto":
        label = record.get("label")
        if not isinstance(label, bool):
            raise RecordProblem(f"'label' must be true or false, got {label!r}")
        return _prompt_turns(record.get("prompt")), _answer(record.get("completion"), "completion"), label
    tag = spec.columns.get("kto_tag", "")
    label = record.get(tag)
    if not isinstance(label, bool):
        raise RecordProblem(f"{tag!r} (kto_tag) must be true or false, got {label!r}")
    turns = record_turns(record, spec, formatting)
    if not turns or turns[-1][0] != "assistant":
        raise RecordProblem("the last turn must be the assistant's answer")
    return turns[:-1], str(turns[-1][1]), label


def preference_format(record: Any) -> str:
    """``preference`` / ``kto`` / ``feedback`` for a plain file's first record; RecordProblem when none fits."""
    keys = set(record) if isinstance(record, Mapping) else set()
    if {"question", "rating"} <= keys:
        return "feedback"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "preference"
    if {"prompt", "completion", "label"} <= keys:
        return "kto"
    if {"chosen", "rejected"} <= keys:
        return "sharegpt" if ("conversations" in keys or "messages" in keys) else "alpaca"
    raise RecordProblem(f"cannot tell the preference format from keys {sorted(keys)}: expected "
                        "{prompt, chosen, rejected}, {prompt, completion, label}, the page's feedback file, or a "
                        "dataset_info.json entry with \"ranking\": true")


# --- files -> examples --------------------------------------------------------------------------------------------


def _feedback(record: Any, context: str, stage: str, path: Path, line: int, out: PreferenceData) -> None:
    rating, answer, correction = feedback_rating(record)
    turns, mapping = feedback_prompt(record, context)
    source = f"{path}:{line}"
    if stage == "dpo":
        if rating == "up":
            out.skipped.append(BadRecord(str(path), line, "thumbs-up (dpo needs a rejected answer)"))
        elif not correction or not answer.strip():
            out.skipped.append(BadRecord(str(path), line, "thumbs-down without a correction (dpo needs a chosen "
                                                          "answer)"))
        else:
            chosen, rejected = feedback_reply(correction, mapping), feedback_reply(answer, mapping)
            out.pairs.append(PreferencePair(_prompt(turns, chosen), chosen, rejected, source))
        return
    if answer.strip():
        reply = feedback_reply(answer, mapping)
        out.judgements.append(Judgement(_prompt(turns, reply), reply, rating == "up", source))
    if rating == "down" and correction:
        reply = feedback_reply(correction, mapping)
        out.judgements.append(Judgement(_prompt(turns, reply), reply, True, source))


def load_preferences(specs: Sequence[DatasetSpec], stage: str, system: str = "", feedback_context: str = "quotes",
                     max_samples: int = 0) -> PreferenceData:
    """Read every record of ``specs`` for ``stage`` (``dpo`` or ``kto``); bad records are collected, not raised.

    Args:
        specs: the datasets, read in order.
        stage: ``dpo`` (pairs) or ``kto`` (judgements; pairs are unpaired into two).
        system: a system prompt for prompts without one ("" = none).
        feedback_context: ``quotes`` or ``none`` (see :func:`finetune.data.formats.feedback_prompt`).
        max_samples: stop after this many examples in all (0 = all).
    """
    out = PreferenceData()
    for spec in specs:
        for path in spec.files():
            out.files.append(path)
            rows = list(read_records(path))
            formatting = spec.formatting
            first = next((record for _, record, error in rows if not error), None)
            try:
                if formatting == "auto" or (not spec.ranking and "kto_tag" not in spec.columns
                                            and formatting not in ("feedback", "preference", "kto")):
                    formatting = preference_format(first)
            except RecordProblem as exc:
                out.bad.append(BadRecord(str(path), rows[0][0] if rows else 1, str(exc)))
                continue
            if formatting == "feedback":
                rows = latest_feedback(rows)
            unpaired = formatting == "kto" or "kto_tag" in spec.columns
            if unpaired and stage == "dpo":
                raise ConfigError(f"{path} holds unpaired (kto) examples; stage=dpo needs chosen/rejected pairs: "
                                  "use stage=kto")
            taken = 0
            for line, record, error in rows:
                source = f"{path}:{line}"
                if error:
                    out.bad.append(BadRecord(str(path), line, error))
                    continue
                before = out.examples(stage)
                try:
                    if formatting == "feedback":
                        _feedback(record, feedback_context, stage, path, line, out)
                    elif unpaired:
                        turns, completion, label = judgement_from_record(record, spec, formatting)
                        turns = _with_system(turns, system)
                        out.judgements.append(Judgement(_prompt(turns, completion), completion, label, source))
                    else:
                        turns, chosen, rejected = pair_from_record(record, spec, formatting)
                        prompt = _prompt(_with_system(turns, system), chosen)
                        if stage == "dpo":
                            out.pairs.append(PreferencePair(prompt, chosen.strip(), rejected.strip(), source))
                        else:
                            out.judgements += [Judgement(prompt, chosen.strip(), True, source),
                                               Judgement(prompt, rejected.strip(), False, source)]
                except RecordProblem as exc:
                    out.bad.append(BadRecord(str(path), line, str(exc)))
                    continue
                taken += out.examples(stage) > before
                if spec.num_samples and taken >= spec.num_samples:
                    break
                if max_samples and out.examples(stage) >= max_samples:
                    return out
    return out


def _with_system(turns: list[tuple[str, Any]], system: str) -> list[tuple[str, Any]]:
    return [("system", system), *turns] if system and not any(r == "system" for r, _ in turns) else turns


def check_preferences(data: PreferenceData, stage: str, on_bad_record: str = "error") -> PreferenceData:
    """Raise :class:`DataError` on bad records (``error``) or log each (``skip``); log what was used and skipped."""
    if data.bad and on_bad_record == "error":
        raise DataError(data.bad)
    for record in data.bad:
        logger.warning("skipped bad record %s", record)
    logger.info("%s data: %s", stage, ", ".join(f"{k} {v}" for k, v in data.counts().items()))
    if stage == "kto" and data.judgements and len({j.desirable for j in data.judgements}) < 2:
        kind = "desirable" if data.judgements[0].desirable else "undesirable"
        raise ConfigError(f"stage=kto needs both desirable and undesirable examples; all {len(data.judgements)} "
                          f"are {kind} (add 👍 and 👎 feedback, or pairs)")
    if not data.examples(stage):
        what = "chosen/rejected pairs" if stage == "dpo" else "judged answers"
        raise ConfigError(f"the datasets hold no {what} for stage={stage}")
    return data


def load_preference_splits(cfg: FinetuneConfig) -> tuple[list[Any], list[Any], PreferenceData, dict[str, Any]]:
    """(train, dev, the training data read, description for rag_adapter.json) for ``cfg.stage``: pairs for dpo,
    judgements for kto."""
    data = cfg.data

    def read(names: Sequence[str], max_samples: int) -> PreferenceData:
        specs = [resolve_dataset(name, data.dataset_dir, data.format) for name in names]
        loaded = load_preferences(specs, cfg.stage, data.system, data.feedback_context, max_samples)
        return check_preferences(loaded, cfg.stage, data.on_bad_record)

    def examples(loaded: PreferenceData) -> list[Any]:
        return list(loaded.pairs) if cfg.stage == "dpo" else list(loaded.judgements)

    loaded = read(data.datasets, data.max_samples)
    if data.dev_datasets:
        train, dev = examples(loaded), examples(read(data.dev_datasets, 0))
    else:
        train, dev = split_dev(examples(loaded), data.dev_ratio, data.dev_max_samples, cfg.seed)
    described = {"dataset": ",".join(data.datasets), "dataset_sha256": loaded.sha256(),
                 "dataset_files": [str(p) for p in loaded.files], "bad_records_skipped": len(loaded.bad)}
    return train, dev, loaded, described
