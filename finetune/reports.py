"""What a finished run leaves behind: ``metrics.json`` and ``loss_curve.png`` in the run folder, and the adapter in the
app's registry.

Separate from the recipe (:mod:`finetune.train`) because none of it touches the trainer: it reads the log history and
the config, and writes files. The adapter is written atomically and with its ``rag_adapter.json``
(:func:`rag.models.adapters.write_metadata`), because the app lists the registry folder while a run may be writing into it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune.config import FinetuneConfig
from rag.models.adapters import write_metadata

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
LOSS_PLOT = "loss_curve.png"


def summarize(log_history: Sequence[dict[str, Any]], eval_step: int | None = None) -> dict[str, float]:
    """The metrics of the last evaluation, or of the one at ``eval_step`` (the best checkpoint, when early stopping
    loaded it): ``eval_loss``, ``bleu-4``, ``rouge-1/2/l``, ``eval_token_accuracy``; plus the run's mean train loss
    and the tokens trained on."""
    names = {"eval_loss": "eval_loss", "eval_mean_token_accuracy": "eval_token_accuracy", "train_loss": "train_loss",
             "num_tokens": "train_tokens", **{f"eval_{m}": m for m in ("bleu-4", "rouge-1", "rouge-2", "rouge-l")}}
    out: dict[str, float] = {}
    for entry in log_history:
        is_eval = "eval_loss" in entry
        if is_eval and eval_step is not None and entry.get("step") != eval_step:
            continue
        for key, value in entry.items():
            if key in names and isinstance(value, (int, float)) and not (is_eval and key == "num_tokens"):
                out[names[key]] = float(value)
    return out


def write_reports(output_dir: Path, log_history: Sequence[dict[str, Any]], extra: dict[str, Any]) -> None:
    """``metrics.json`` (summary, run facts and every log entry) and ``loss_curve.png`` (train and eval loss)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"summary": summarize(log_history), **extra, "log_history": list(log_history)}
    (output_dir / METRICS_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (pip install matplotlib)", LOSS_PLOT)
        return
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    dev = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    figure, axes = plt.subplots(figsize=(7, 4))
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss")
    if dev:
        axes.plot(*zip(*dev, strict=True), "o-", label="dev loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(output_dir / LOSS_PLOT, dpi=100)
    plt.close(figure)


def register_adapter(model: Any, target: Path, metadata: dict[str, Any]) -> Path:
    """Save the LoRA weights (safetensors) and ``rag_adapter.json`` to ``target``, atomically: written to a hidden
    ``.<name>.partial`` folder that the registry ignores, then swapped in, so the app never sees half an adapter."""
    partial = target.with_name(f".{target.name}.partial")
    old = target.with_name(f".{target.name}.old")
    for folder in (partial, old):
        shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(str(partial), safe_serialization=True, save_embedding_layers=False)  # no hub lookup
    extras = {k: metadata.pop(k) for k in list(metadata) if k not in ("name", "base_model", "base_revision",
                                                                       "template", "dataset", "metrics", "created")}
    (partial / "rag_adapter.json").write_text(json.dumps(extras, ensure_ascii=False), encoding="utf-8")
    write_metadata(partial, **metadata)  # keeps the extra fields, validates and completes the rest
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def training_facts(cfg: FinetuneConfig, precision: str, steps: int) -> dict[str, Any]:
    """The hyper-parameters recorded in rag_adapter.json."""
    return {"steps": steps, "seed": cfg.seed, "precision": precision, **dataclasses.asdict(cfg.train),
            "max_input_tokens": cfg.data.max_input_tokens, "max_output_tokens": cfg.data.max_output_tokens,
            "lora": dataclasses.asdict(cfg.lora)}
