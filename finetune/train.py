"""The LoRA recipe (SFT, DPO, KTO): ``python -m finetune train configs/finetune/X.yaml [key=value ...]``.

``stage: sft`` (the default) trains on conversations; ``stage: dpo`` on chosen/rejected pairs and ``stage: kto`` on
answers judged desirable or not (:mod:`finetune.data.preference`, the page's 👍/👎 included), through TRL's
``DPOTrainer`` / ``KTOTrainer`` (:mod:`finetune.preference`). ``model.quantization: 4bit`` loads the base in NF4
(QLoRA) for any stage.

Reads top to bottom: config -> data (conversations -> ids/labels with the app's own templates) -> base model (found
and converted exactly as the app loads it) + LoRA -> TRL's ``SFTTrainer`` (a transformers ``Trainer``: mixed
precision, gradient accumulation and checkpointing, warmup + cosine/linear schedule, gradient clipping,
row packing (finetune/packing.py) or length-grouped batches, checkpoints with resume, eval loss, early stopping) -> the
adapter saved into the app's registry (``adapters/<name>/``: peft safetensors + ``rag_adapter.json``), plus ``metrics.json`` and
``loss_curve.png`` in the run folder. What the project adds on top of the libraries: the template/mask code, BLEU/ROUGE
of greedy answers at each evaluation, the progress bar with tokens/s, and the registry metadata. This file keeps the
recipe and the choices it makes (base model, template, precision, data); the trainer plumbing is in
finetune/trainer.py and what a run writes (reports, the registered adapter) in finetune/reports.py.

Multi-GPU: ``accelerate launch -m finetune train CONFIG`` (or ``torchrun -m finetune train CONFIG``) runs one
process per GPU with DDP; the batch per optimizer step is ``micro_batch_size * grad_accum_steps * GPUs``. Only the
main process writes the adapter and the reports.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.base_model import find_base_model, load_base_model, pick_template
from finetune.config import FinetuneConfig
from finetune.data.load import Conversation, load_splits
from finetune.data.preference import load_preference_splits
from finetune.preference import (
    REFERENCE_ADAPTER,
    make_preference_trainer,
    preference_arguments,
    start_model,
    tokenize_preferences,
)
from finetune.reports import register_adapter, summarize, training_facts, write_reports
from finetune.templates import tokenize_conversation
from finetune.trainer import check_fsdp_possible, make_trainer, resume_checkpoint, torch_threads, trainer_arguments
from rag.core.errors import ConfigError, RagError
from rag.models.templates import ChatTemplate

logger = logging.getLogger(__name__)


@dataclass
class TokenizedData:
    rows: list[dict[str, list[int]]]
    conversations: list[Conversation]  # the ones kept, aligned with rows
    skipped: int = 0  # prompt too long even without history
    trimmed: int = 0  # oldest turns dropped
    cut: int = 0  # answers cut to max_output_tokens

    @property
    def tokens(self) -> int:
        return sum(len(row["input_ids"]) for row in self.rows)


@dataclass
class RunResult:
    """What a finished run produced."""

    adapter_dir: Path | None
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    data_counts: dict[str, int] = field(default_factory=dict)  # examples used and skipped, by kind


# --- base model ---------------------------------------------------------------------------------------------------


def pick_precision(setting: str, use_cpu: bool) -> str:
    """``auto`` -> bf16 on CUDA compute capability >= 8, fp16 on older GPUs, fp32 on CPU."""
    import torch

    if setting != "auto":
        if setting == "fp16" and (use_cpu or not torch.cuda.is_available()):
            raise ConfigError("train.precision=fp16 needs a CUDA GPU; use train.precision=fp32 (or bf16) on CPU")
        return setting
    if use_cpu or not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"


def check_targets(model: Any, targets: Sequence[str]) -> None:
    """Every LoRA target must name linear layers of the model; the error lists the ones it has."""
    import torch

    if list(targets) == ["all-linear"]:
        return
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = sorted(set(targets) - linear)
    if missing:
        raise ConfigError(f"lora.target_modules {missing} are not linear layers of this model; it has "
                          f"{sorted(linear - {'lm_head'})} (or use lora.target_modules=[all-linear])")


# --- data ---------------------------------------------------------------------------------------------------------


def tokenize_all(conversations: Sequence[Conversation], template: ChatTemplate, tokenizer: Any,
                 max_input_tokens: int, max_output_tokens: int) -> TokenizedData:
    """Conversations -> rows of ``input_ids`` / ``labels`` (see :func:`finetune.templates.tokenize_conversation`)."""
    out = TokenizedData([], [])
    for conversation in conversations:
        example = tokenize_conversation(template, tokenizer, conversation.messages, max_input_tokens, max_output_tokens)
        if example is None:
            out.skipped += 1
            logger.warning("%s skipped: its last question alone is longer than data.max_input_tokens=%d",
                           conversation.source, max_input_tokens)
            continue
        out.rows.append({"input_ids": example.input_ids, "labels": example.labels})
        out.conversations.append(conversation)
        out.trimmed += example.dropped_turns > 0
        out.cut += example.answer_cut
    return out


# --- the recipe ---------------------------------------------------------------------------------------------------


def train(cfg: FinetuneConfig, show_progress: bool = False) -> RunResult:
    """Run the recipe ``cfg``: see the module docstring. Returns where the adapter went and its final metrics."""
    import torch
    from transformers import AutoTokenizer, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    set_seed(cfg.seed)
    output_dir = cfg.output_path
    if cfg.train.fsdp:
        check_fsdp_possible(cfg.train.fsdp)  # before minutes of data and model loading

    # 1. data: every record -> a validated conversation (sft), pair (dpo) or judged answer (kto); a dev split
    if cfg.stage == "sft":
        train_conversations, dev_conversations, dataset = load_splits(cfg)
    else:
        train_preferences, dev_preferences, preference_data, dataset = load_preference_splits(cfg)

    # 2. the base model exactly as the app will load it, and the app's chat template for it
    base = find_base_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(str(base.folder), local_files_only=True)
    template = pick_template(cfg.model.template, tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = template.eos_token

    # 3. ids + labels (loss only on assistant turns) with the serving template code
    limits = (cfg.data.max_input_tokens, cfg.data.max_output_tokens)
    if cfg.stage == "sft":
        train_data = tokenize_all(train_conversations, template, tokenizer, *limits)
        dev_data = tokenize_all(dev_conversations, template, tokenizer, *limits)
        train_rows, dev_rows, sample = train_data.rows, dev_data.rows, dev_data.conversations
        counts = {"conversations": len(train_data.rows) + len(dev_data.rows),
                  "skipped: prompt over data.max_input_tokens": train_data.skipped + dev_data.skipped}
        logger.info("train: %d conversations, %d tokens (%d trimmed, %d answers cut, %d skipped); dev: %d",
                    len(train_data.rows), train_data.tokens, train_data.trimmed, train_data.cut, train_data.skipped,
                    len(dev_data.rows))
    else:
        train_rows, too_long = tokenize_preferences(train_preferences, template, tokenizer, *limits)
        dev_rows, dev_too_long = tokenize_preferences(dev_preferences, template, tokenizer, *limits)
        sample = []  # no reference answers to score generations against
        counts = {**preference_data.counts(), "skipped: prompt over data.max_input_tokens": too_long + dev_too_long}
    if not train_rows:
        raise ConfigError(f"no training example fits data.max_input_tokens={cfg.data.max_input_tokens}")

    # 4. model + LoRA, precision and the trainer
    use_cpu = cfg.train.device == "cpu"
    precision = pick_precision(cfg.train.precision, use_cpu)
    model = load_base_model(cfg.model, base.folder, precision, use_cpu, cfg.train.gradient_checkpointing)
    reference = ""
    if cfg.stage == "sft":
        check_targets(model, cfg.lora.target_modules)
        args = trainer_arguments(cfg, precision, bool(dev_rows), output_dir)
        trainer = make_trainer(cfg, model, tokenizer, template, args, train_rows, dev_rows,
                               sample[: cfg.eval.generate_samples], show_progress)
    else:
        model, reference = start_model(cfg, model, base.model_id, template.name)
        if reference == "base" and not cfg.preference.start_adapter:
            check_targets(model, cfg.lora.target_modules)
        args = preference_arguments(cfg, precision, bool(dev_rows), output_dir)
        trainer = make_preference_trainer(cfg, model, tokenizer, args, train_rows, dev_rows, show_progress)

    # 5. train, resuming from a checkpoint when asked
    on_gpu = torch.cuda.is_available() and not use_cpu
    load_peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0  # the model loaded (k-bit: no bf16 copy)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()  # the training peak is then training's own
    resume = resume_checkpoint(cfg.train.resume, output_dir, get_last_checkpoint)
    started = time.perf_counter()
    with torch_threads(cfg.train.cpu_threads), out_of_memory_advice(cfg):
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started

    # 6. the adapter, its metadata and the reports (main process only)
    best = trainer.state.best_model_checkpoint if args.load_best_model_at_end else None
    metrics = summarize(trainer.state.log_history, int(best.rsplit("-", 1)[-1]) if best else None)
    adapter_dir = None
    if trainer.is_world_process_zero():
        peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0
        facts = {"run": cfg.name, "base_model": base.model_id, "base_origin": base.origin, "template": template.name,
                 "precision": precision, "processes": trainer.accelerator.num_processes,
                 "parallelism": ("fsdp" if trainer.is_fsdp_enabled else
                                 "ddp" if trainer.accelerator.num_processes > 1 else "single"),
                 "seconds": round(seconds, 1), "steps": trainer.state.global_step,
                 "tokens_per_second": round(metrics.get("train_tokens", 0.0) / max(seconds, 1e-9), 1),
                 "peak_gpu_memory_gib": round(peak, 2), "load_peak_gpu_memory_gib": round(load_peak, 2),
                 "train_examples": len(train_rows),
                 "dev_examples": len(dev_rows), "resumed_from": str(resume or ""), "stage": cfg.stage,
                 "quantization": cfg.model.quantization, "data_counts": counts,
                 "best_checkpoint": best or "", **dataset}
        write_reports(output_dir, trainer.state.log_history, facts)
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        if REFERENCE_ADAPTER in unwrapped.peft_config:  # the frozen copy of the start adapter is not saved
            unwrapped.delete_adapter(REFERENCE_ADAPTER)
        unwrapped.peft_config["default"].base_model_name_or_path = base.model_id
        target = (Path(cfg.output.adapters_dir).expanduser() / cfg.adapter_name if cfg.output.register
                  else output_dir / "adapter")
        target.parent.mkdir(parents=True, exist_ok=True)
        adapter_dir = register_adapter(unwrapped, target, {
            "name": cfg.adapter_name, "base_model": base.model_id, "base_revision": base.revision,
            "template": template.name, "dataset": dataset["dataset"], "dataset_sha256": dataset["dataset_sha256"],
            "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
            "training": training_facts(cfg, precision, trainer.state.global_step), "run_dir": str(output_dir),
            "stage": cfg.stage, "reference_adapter": "" if reference == "base" else reference,
            "base_quantization": cfg.model.quantization, "data_counts": counts,
        })
        logger.info("adapter %s written to %s", cfg.adapter_name, adapter_dir)
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.num_processes > 1:  # a clean gloo/NCCL shutdown: exiting with the group alive aborted a
        trainer.accelerator.end_training()    # rank now and then ("terminate called without an active exception")
    return RunResult(adapter_dir, output_dir, metrics, counts)


@contextlib.contextmanager
def out_of_memory_advice(cfg: FinetuneConfig) -> Iterator[None]:
    """A CUDA out-of-memory error in training becomes one message with the settings that lower the memory, instead
    of a traceback (the checkpoints written so far stay; ``train.resume=auto`` continues from them)."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        t = cfg.train
        total = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0.0
        half = max(1, t.micro_batch_size // 2)
        tips = [f"train.micro_batch_size={half} train.grad_accum_steps={t.grad_accum_steps * 2} (the same batch)"
                if t.micro_batch_size > 1 else "a shorter data.max_input_tokens / data.max_output_tokens"]
        if not t.gradient_checkpointing:
            tips.append("train.gradient_checkpointing=true (~40 % slower, a fraction of the activation memory)")
        if cfg.lora.dropout:
            tips.append("lora.dropout=0 (dropout keeps a copy of every adapted layer's input)")
        raise RagError(f"the GPU ran out of memory training with train.micro_batch_size={t.micro_batch_size} "
                       f"({total:.0f} GiB card; the ChatGLM3-6B shape needs ~36 GiB at 12 packed rows of 384 "
                       f"tokens, docs/BENCHMARKS.md). Try: " + "; or ".join(tips) +
                       ". Checkpoints written so far are kept (train.resume=auto).") from exc
