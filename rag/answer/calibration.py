"""The calibrated answerability decision: a logistic model over the decision's signals.

Term coverage alone does not carry from one corpus to another: the share of a question's words that the answering
passage repeats depends on how the questions are put (a paraphrase repeats few) and on the documents, so a fixed
coverage bar fitted on one corpus refuses most answerable questions of another (docs/EVAL.md, "Held-out set").
The decision here combines signals that each separate answerable from unanswerable questions on their own:

- ``coverage``: the share of the key terms' weight the lead passage's sentences cover
  (:func:`rag.answer.answerable.assess`);
- ``aligned``: the same coverage with words said otherwise — per key term, the larger of its word-overlap credit
  and how closely a token of those sentences comes to the term's tokens (the index's embedder, token by token in
  context: :func:`rag.answer.answerable.embedder_alignment`). It replaces ``coverage`` in an embedder's model;
- ``sim_max``: the best question-to-sentence similarity over the retrieved sentences (the index's embedder, question
  as a query, sentence as a passage) — sees paraphrases that share no words;
- ``absent_share``: the share of the question's weight held by words no chunk of the index holds at all (a
  question about something the documents never name);
- ``cross_language``: 1 when the lead sentence is in another language than the question. Coverage through dictionary
  relatives and a similarity across languages both run lower for an answerable question than within one language,
  so the model needs their offset to stop refusing most cross-language questions (docs/EVAL.md).

``p = sigmoid(w · standardised(x) + b)``; the question is answerable when ``p >= min_answer_probability`` and its
passage holds every name and number the question gives. The weights are fitted by ``eval/calibrate_answerability.py``
on the ``tune`` splits of the project's question sets and stored in ``calibration.json`` beside this file, one model
per embedder (a similarity's scale is the embedder's own) and one without ``sim_max`` and ``aligned`` (coverage
instead) for any other embedder.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.core.errors import ConfigError

DEFAULT_PATH = Path(__file__).with_name("calibration.json")
ANY_EMBEDDER = "*"  # the model for an embedder that has none of its own (no similarity feature)
SIGNALS = ("coverage", "aligned", "sim_max", "absent_share", "cross_language")  # what assess() computes for a model (Assessment.signals)


@dataclass(frozen=True)
class Calibration:
    """A fitted logistic model over named features.

    Attributes:
        features: the feature names, in order.
        mean / scale: standardisation of each feature.
        weights / bias: the fitted coefficients (on the standardised features).
        threshold: the probability the fit chose as the default bar.
        embedder: the embedder the model was fitted with (``*`` = any: no similarity feature).
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    embedder: str = ANY_EMBEDDER

    @property
    def needs_similarity(self) -> bool:
        """It reads the embedder's similarities (``sim_max`` or ``aligned``): only for the embedder it was fitted with."""
        return "sim_max" in self.features or "aligned" in self.features

    def probability(self, values: Mapping[str, float]) -> float:
        """P(answerable) for a question's signals (a missing feature counts as 0)."""
        z = self.bias + sum(w * (float(values.get(name, 0.0)) - m) / s for name, m, s, w in zip(
            self.features, self.mean, self.scale, self.weights, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def to_json(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "bias": self.bias, "threshold": self.threshold,
                "embedder": self.embedder}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        features = tuple(str(f) for f in data["features"])
        columns = [tuple(float(v) for v in data[key]) for key in ("mean", "scale", "weights")]
        if any(len(c) != len(features) for c in columns) or any(s <= 0 for s in columns[1]):
            raise ConfigError(f"answerability calibration: {len(features)} features but mean/scale/weights of "
                              f"lengths {[len(c) for c in columns]} (or a scale <= 0)")
        return cls(features, columns[0], columns[1], columns[2], float(data["bias"]), float(data["threshold"]),
                   str(data.get("embedder", ANY_EMBEDDER)))


def load_calibration(embedder: str | None, path: str | Path | None = None) -> Calibration:
    """The model for ``embedder`` (its ``describe()["name"]``), else the one for any embedder. The file is read
    once while it stays unchanged (the page builds a pipeline for every question)."""
    source = Path(path) if path else DEFAULT_PATH
    try:
        models = _models(source, source.stat().st_mtime_ns)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"answerability calibration {source} cannot be read: {exc}") from exc
    chosen = models.get(embedder or "") or models.get(ANY_EMBEDDER)
    if chosen is None:
        raise ConfigError(f"answerability calibration {source} has no model for {embedder!r} nor for any embedder")
    return chosen


@functools.lru_cache(maxsize=8)
def _models(source: Path, mtime_ns: int) -> dict[str, Calibration]:
    """The models of a calibration file (``mtime_ns`` keys the cache: an edited file is read again)."""
    data = json.loads(source.read_text(encoding="utf-8"))
    return {name: Calibration.from_json(model) for name, model in data["models"].items()}
