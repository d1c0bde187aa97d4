"""Fit the calibrated answerability decision (rag/answer/calibration.py) on the ``tune`` splits of question sets.

    python eval/answer_features.py --index IDX --questions Q.jsonl --out /tmp/f_set.jsonl      # once per set
    python eval/calibrate_answerability.py --features dev2=/tmp/f_dev2.jsonl --features kb=/tmp/f_kb.jsonl \
        --features dev=/tmp/f_dev.jsonl --drop linuxcnc --write rag/answer/calibration.json

With ``--any-features`` (dumped with ``answer_features.py --align-lead 0``), the model for any other embedder is fitted
on those: such an embedder gives no token vectors, so its lead is the best word coverage (docs/EVAL.md, eighth pass).

A logistic regression (L2, classes weighted equally) over standardised signals, fitted on the tune questions whose
passage holds every name and number (the others are refused whatever the model says). Two models: one with the
embedder's question-to-sentence similarity (for the embedder the features were computed with) and one without it
(for any other embedder). The threshold is the one with the fewest false refusals on the pooled tune questions among
those that refuse at least ``--min-refusal`` of the tune's unanswerable questions. Prints, per set and split, what
the decision does (the ``test`` rows are the check; nothing is chosen on them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag.answer.calibration import ANY_EMBEDDER, SIGNALS, Calibration

# the embedder's model reads coverage with words said otherwise (aligned) instead of word overlap (coverage)
WITH_SIMILARITY = tuple(f for f in SIGNALS if f != "coverage")
WITHOUT_SIMILARITY = tuple(f for f in SIGNALS if f not in ("sim_max", "aligned"))


def fit(rows: list[dict], features: tuple[str, ...], l2: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, scale, [weights..., bias]) of a class-balanced L2 logistic regression (Newton steps)."""
    x = np.array([[float(r.get(f) or 0.0) for f in features] for r in rows])
    y = np.array([1.0 if r["answerable"] else 0.0 for r in rows])
    if y.min() == y.max():
        raise SystemExit("the tune rows hold one class only: nothing to fit")
    mean, scale = x.mean(0), x.std(0) + 1e-9
    z = np.c_[(x - mean) / scale, np.ones(len(x))]
    balance = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    penalty = l2 * np.diag(np.r_[np.ones(len(features)), 0.0])
    w = np.zeros(z.shape[1])
    for _ in range(100):
        p = 1 / (1 + np.exp(-z @ w))
        grad = z.T @ (balance * (p - y)) + penalty @ w
        hess = (z * (balance * p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return mean, scale, w


def decide(rows: list[dict], model: Calibration, bar: float) -> tuple[float | None, float | None]:
    """(refusal of unanswerable, false refusal of answerable) with the anchor gate and the model at ``bar``."""
    def refused(r: dict) -> bool:
        return not r["anchored"] or model.probability(r) < bar
    answerable = [refused(r) for r in rows if r["answerable"]]
    unanswerable = [refused(r) for r in rows if not r["answerable"]]
    return (float(np.mean(unanswerable)) if unanswerable else None,
            float(np.mean(answerable)) if answerable else None)


def auc(rows: list[dict], model: Calibration) -> float | None:
    pos = [model.probability(r) for r in rows if r["answerable"]]
    neg = [model.probability(r) for r in rows if not r["answerable"]]
    if not pos or not neg:
        return None
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", action="append", required=True, help="NAME=features.jsonl (answer_features.py)")
    parser.add_argument("--any-features", action="append", default=None,
                        help="NAME=features.jsonl for the model of any other embedder (default: --features); dumped "
                             "with --align-lead 0, as such an embedder (no token vectors) picks its lead")
    parser.add_argument("--drop", default=None, help="leave out questions whose source or text matches this regex "
                                                     "(a part of the corpus the index does not hold)")
    parser.add_argument("--min-refusal", type=float, default=0.85)
    parser.add_argument("--write", default=None, help="write the calibration JSON here")
    args = parser.parse_args()
    drop = re.compile(args.drop, re.IGNORECASE) if args.drop else None
    def read(specs: list[str]) -> dict[str, list[dict]]:
        sets: dict[str, list[dict]] = {}
        for spec in specs:
            name, _, path = spec.partition("=")
            rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
            sets[name] = [r for r in rows
                          if not (drop and (drop.search(r.get("source", "")) or drop.search(r["question"])))]
        return sets

    own_sets = read(args.features)
    any_sets = read(args.any_features) if args.any_features else own_sets
    embedders = {r["embedder"] for rows in own_sets.values() for r in rows if r["split"] == "tune"}
    if len(embedders) != 1:
        raise SystemExit(f"the feature files come from {len(embedders)} embedders ({embedders}); fit one at a time")
    embedder = embedders.pop()
    models: dict[str, dict] = {}
    for key, features, sets in ((embedder, WITH_SIMILARITY, own_sets), (ANY_EMBEDDER, WITHOUT_SIMILARITY, any_sets)):
        tune = [r for rows in sets.values() for r in rows if r["split"] == "tune"]
        anchored = [r for r in tune if r["anchored"]]
        mean, scale, w = fit(anchored, features)
        model = Calibration(features, tuple(mean), tuple(scale), tuple(w[:-1]), float(w[-1]), 0.5, key)
        bars = [b / 100 for b in range(5, 96)]
        fits = [(b, *decide(tune, model, b)) for b in bars]
        allowed = [f for f in fits if f[1] is not None and f[1] >= args.min_refusal]
        bar = min(allowed, key=lambda f: (f[2], -f[1]))[0] if allowed else 0.5
        model = Calibration(features, model.mean, model.scale, model.weights, model.bias, bar, key)
        models[key] = {**model.to_json(), "fitted_on": {n: sum(r["split"] == "tune" for r in rows) for n, rows in sets.items()}}
        print(json.dumps({"model": key, "features": features, "weights": [round(v, 3) for v in w[:-1]],
                          "bias": round(float(w[-1]), 3), "threshold": bar}, ensure_ascii=False))
        for name, rows in sets.items():
            for split in ("tune", "test"):
                part = [r for r in rows if r["split"] == split]
                if not part:
                    continue
                refusal, false_refusal = decide(part, model, bar)
                area = auc([r for r in part if r["anchored"]], model)
                print(json.dumps({"model": key, "set": name, "split": split,
                                  "n": [sum(r["answerable"] for r in part), sum(not r["answerable"] for r in part)],
                                  "refusal": None if refusal is None else round(refusal, 3),
                                  "false_refusal": None if false_refusal is None else round(false_refusal, 3),
                                  "auc_anchored": None if area is None else round(area, 3)}))
    if args.write:
        Path(args.write).write_text(json.dumps({
            "about": "rag/answer/calibration.py; fitted by eval/calibrate_answerability.py (docs/EVAL.md)",
            "date": datetime.date.today().isoformat(), "min_refusal": args.min_refusal, "models": models},
            ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
