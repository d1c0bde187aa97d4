"""The ``dpo`` and ``kto`` stages' trainer: TRL's ``DPOTrainer`` / ``KTOTrainer`` on rows tokenized by our templates.

The recipe (:mod:`finetune.train`) hands over pairs or judgements (:mod:`finetune.data.preference`); here they become
``prompt_ids`` + ``chosen_ids`` / ``rejected_ids`` (DPO) or ``prompt_ids`` + ``completion_ids`` + ``label`` (KTO)
with the very template code the app serves with (:func:`finetune.templates.prompt_and_completion`), so TRL's own
text tokenization is skipped. The trainer arguments are the SFT ones (:func:`finetune.trainer.shared_arguments`)
plus ``preference.*``.

The reference model is never a second copy of the base:

- new LoRA (``preference.start_adapter`` empty): the reference is the base with the adapter disabled;
- ``start_adapter`` = an SFT adapter: training continues from it; the reference is a frozen copy of that adapter
  (``preference.reference=adapter``, LoRA-sized; TRL's ``ref`` adapter) or the base with adapters disabled
  (``preference.reference=base``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune.config import FinetuneConfig
from finetune.data.preference import Judgement, PreferencePair
from finetune.templates import prompt_and_completion
from finetune.trainer import finish_trainer, lora_config, shared_arguments
from rag.core.errors import ConfigError
from rag.models.adapters import check_adapter, find_adapter
from rag.models.templates import ChatTemplate

logger = logging.getLogger(__name__)

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of a start adapter


def tokenize_preferences(examples: Sequence[PreferencePair | Judgement], template: ChatTemplate, tokenizer: Any,
                         max_input_tokens: int, max_output_tokens: int) -> tuple[list[dict[str, Any]], int]:
    """Pairs -> ``{"prompt_ids", "chosen_ids", "rejected_ids"}``, judgements -> ``{"prompt_ids", "completion_ids",
    "label"}``; and how many were skipped because their prompt does not fit ``max_input_tokens``."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    limits = (max_input_tokens, max_output_tokens)
    for example in examples:
        if isinstance(example, PreferencePair):
            chosen = prompt_and_completion(template, tokenizer, example.prompt, example.chosen, *limits)
            rejected = prompt_and_completion(template, tokenizer, example.prompt, example.rejected, *limits)
            if chosen is None or rejected is None:
                skipped += 1
                continue
            if chosen[0] != rejected[0]:  # both trim the same history: a mismatch is a template bug
                raise ConfigError(f"{example.source}: the chosen and rejected prompts tokenize differently")
            rows.append({"prompt_ids": chosen[0], "chosen_ids": chosen[1], "rejected_ids": rejected[1]})
        else:
            pair = prompt_and_completion(template, tokenizer, example.prompt, example.completion, *limits)
            if pair is None:
                skipped += 1
                continue
            rows.append({"prompt_ids": pair[0], "completion_ids": pair[1], "label": example.desirable})
    if skipped:
        logger.warning("%d preference example(s) skipped: the prompt alone is longer than data.max_input_tokens=%d",
                       skipped, max_input_tokens)
    return rows, skipped


def preference_arguments(cfg: FinetuneConfig, precision: str, has_dev: bool, output_dir: Path) -> Any:
    """The ``DPOConfig`` / ``KTOConfig`` for ``cfg``."""
    from trl import DPOConfig, KTOConfig

    p = cfg.preference
    common = {**shared_arguments(cfg, precision, has_dev, output_dir), "beta": p.beta,
              "max_length": cfg.data.max_input_tokens + cfg.data.max_output_tokens if cfg.data.max_output_tokens
              else None, "disable_dropout": cfg.lora.dropout == 0}
    if cfg.stage == "dpo":
        return DPOConfig(**common, loss_type=[p.loss_type or "sigmoid"], train_sampling_strategy="random")
    # KTO estimates its KL term from the neighbours in a fixed-order batch: sequential sampling of rows that
    # tokenize_preferences' caller shuffled once (seeded)
    return KTOConfig(**common, loss_type=p.loss_type or "kto", desirable_weight=p.desirable_weight,
                     undesirable_weight=p.undesirable_weight, train_sampling_strategy="sequential")


def start_model(cfg: FinetuneConfig, model: Any, base_model_id: str, template: str) -> tuple[Any, str]:
    """The model to hand TRL and the reference it will use: ``(model, reference)`` where reference is ``base`` or
    the start adapter's folder. With ``preference.start_adapter`` the model is a PeftModel continuing that adapter."""
    name = cfg.preference.start_adapter
    if not name:
        return model, "base"
    from peft import PeftModel

    folder = Path(name).expanduser()
    if not (folder / "adapter_config.json").is_file():
        info = find_adapter(cfg.output.adapters_dir, name)
        usable, reason = check_adapter(info, base_model_id, template)
        if not usable:
            raise ConfigError(f"preference.start_adapter={name}: {reason}")
        folder = info.path
    model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    return model, str(folder) if cfg.preference.reference == "adapter" else "base"


def make_preference_trainer(cfg: FinetuneConfig, model: Any, tokenizer: Any, args: Any,
                            train_rows: list[dict[str, Any]], dev_rows: list[dict[str, Any]],
                            show_progress: bool) -> Any:
    """TRL's DPOTrainer / KTOTrainer over our already-tokenized rows; a new LoRA from ``cfg.lora`` unless ``model``
    is already a PeftModel (a start adapter)."""
    from datasets import Dataset
    from peft import PeftModel
    from transformers import EarlyStoppingCallback
    from trl import DPOTrainer, KTOTrainer

    stage_trainer = DPOTrainer if cfg.stage == "dpo" else KTOTrainer
    continuing = isinstance(model, PeftModel)

    class PreferenceTrainer(stage_trainer):  # type: ignore[misc,valid-type]
        """Rows arrive tokenized by our templates: TRL's text tokenization is skipped (KTO's KL completions are
        still built, the same rotation within each batch as TRL's own)."""

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if cfg.stage == "kto" and self.calculate_KL:
                def rotate(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
                    batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
                    return batch

                return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)
            return dataset

    if cfg.stage == "kto":  # sequential sampling (see preference_arguments): shuffle once, seeded
        train_rows = list(train_rows)
        random.Random(cfg.seed).shuffle(train_rows)
    callbacks: list[Any] = [EarlyStoppingCallback(cfg.eval.early_stop_patience)] if args.load_best_model_at_end else []
    trainer = PreferenceTrainer(
        model=model, args=args, processing_class=tokenizer, callbacks=callbacks,
        peft_config=None if continuing else lora_config(cfg),
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(dev_rows) if dev_rows else None,
    )
    if continuing and cfg.preference.reference == "base" and REFERENCE_ADAPTER in trainer.model.peft_config:
        trainer.model.delete_adapter(REFERENCE_ADAPTER)  # TRL then disables the adapter for reference passes
        trainer.model.set_adapter("default")
    return finish_trainer(trainer, cfg, args, show_progress)


def completion_logprob(model: Any, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> float:
    """log p(completion | prompt) under ``model``: the sum over the completion's tokens (no grad)."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()  # [1, seq, vocab]
    logps = torch.log_softmax(logits[0, :-1], dim=-1).gather(1, ids[0, 1:, None])[:, 0]  # [seq - 1]
    return float(logps[len(prompt_ids) - 1:].sum())


def mean_margin(model: Any, rows: Sequence[dict[str, Any]]) -> float:
    """Mean of log p(chosen | prompt) - log p(rejected | prompt) over DPO rows: what DPO raises."""
    margins = [completion_logprob(model, r["prompt_ids"], r["chosen_ids"]) -
               completion_logprob(model, r["prompt_ids"], r["rejected_ids"]) for r in rows]
    return sum(margins) / max(1, len(margins))
