"""The LoRA SFT recipe: ``python -m finetune train configs/finetune/X.yaml [key=value ...]``.

Reads top to bottom: config -> data (conversations -> ids/labels with the app's own templates) -> base model (found
and converted exactly as the app loads it) + LoRA -> TRL's ``SFTTrainer`` (a transformers ``Trainer``: mixed
precision, gradient accumulation and checkpointing, warmup + cosine/linear schedule, gradient clipping,
row packing (finetune/packing.py) or length-grouped batches, checkpoints with resume, eval loss, early stopping) -> the
adapter saved into the app's registry (``adapters/<name>/``: peft safetensors + ``rag_adapter.json``), plus ``metrics.json`` and
``loss_curve.png`` in the run folder. What the project adds on top of the libraries: the template/mask code, BLEU/ROUGE
of greedy answers at each evaluation, the progress bar with tokens/s, and the registry metadata.

Multi-GPU: ``accelerate launch -m finetune train CONFIG`` (or ``torchrun -m finetune train CONFIG``) runs one
process per GPU with DDP; the batch per optimizer step is ``micro_batch_size * grad_accum_steps * GPUs``. Only the
main process writes the adapter and the reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import FinetuneConfig, ModelSection
from finetune.data import Conversation, check, load_conversations, resolve_dataset, split_dev
from finetune.evaluate import generate_answers, score
from finetune.packing import PackedCollator, pack_rows
from finetune.templates import ChatTemplate, detect_template, get_template, tokenize_conversation
from rag import hub
from rag.adapters import write_metadata
from rag.e5build import cache_root
from rag.errors import ConfigError, ModelUnavailableError

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
LOSS_PLOT = "loss_curve.png"


@dataclass
class BaseModel:
    """The base model as the app will see it: ``model_id`` is what rag_adapter.json records (compared with the app's
    ``llm.model`` through :func:`rag.hub.canonical_model_id`); ``folder`` is what is loaded (a native copy for
    ChatGLM3)."""

    model_id: str
    revision: str
    folder: Path
    origin: str


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


# --- base model ---------------------------------------------------------------------------------------------------


def recorded_model_id(name_or_path: str, folder: Path) -> str:
    """The base model id to record: a hub-style name as given (that is what the app's ``llm.model`` holds), else the
    id the local folder says it came from, else its absolute path."""
    if hub.is_hub_id(name_or_path):
        return name_or_path
    return hub.folder_model_id(folder) or str(Path(name_or_path).expanduser().resolve())


def find_base_model(cfg: ModelSection) -> BaseModel:
    """Resolve the base model like the app does (local folder -> caches -> hubs), building the tiny random model when
    ``model.build_tiny`` is set and it is missing, and convert a ChatGLM3 checkpoint to native GLM once."""
    from accelerate import PartialState

    from rag.llm.hf import native_folder

    def resolve() -> tuple[Path, str]:
        return hub.resolve_model(cfg.name_or_path, revision=cfg.revision, source=cfg.source,
                                 modelscope_id=cfg.modelscope_id, cache_dir=cfg.cache_dir,
                                 timeout_s=cfg.hub_timeout_s, kind="base model", section="model")

    with PartialState().main_process_first():  # one process downloads / converts / builds, the others then reuse it
        try:
            path, origin = resolve()
        except ModelUnavailableError:
            if not cfg.build_tiny:
                raise
            path, origin = build_tiny_base(cfg), f"tiny random {cfg.build_tiny} model built by the recipe"
        folder = native_folder(path, cfg.cache_dir)
    return BaseModel(recorded_model_id(cfg.name_or_path, path), cfg.revision, folder, origin)


def build_tiny_base(cfg: ModelSection) -> Path:
    """Build the tiny model where :func:`rag.hub.resolve_model` will find it next time: ``<cache>/<org>--<name>`` for
    a hub-style name (``kbqa/tiny-glm``), else the folder named."""
    from finetune.tiny import build_tiny_model

    name = cfg.name_or_path
    target = (cache_root(cfg.cache_dir) / hub.cache_folder_name(name) if hub.is_hub_id(name) and "/" in name
              else Path(name).expanduser())
    if target.exists():
        raise ConfigError(f"{target} exists but holds no model; remove it, or point model.name_or_path elsewhere")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    template = "" if cfg.template == "auto" else cfg.template
    build_tiny_model(partial, cfg.build_tiny, template)
    os.replace(partial, target)
    logger.info("built tiny %s model at %s", cfg.build_tiny, target)
    return target


def pick_template(setting: str, tokenizer: Any) -> ChatTemplate:
    """``auto``: the template the app will detect for this tokenizer; a name is checked against the tokenizer."""
    detected = detect_template(tokenizer)
    if setting == "auto":
        if detected is None:
            raise ConfigError("model.template=auto could not tell the chat template from the tokenizer; set "
                              "model.template to one of chatglm3, chatml, glm4, llama3")
        return get_template(detected)
    template = get_template(setting)
    template.check_tokenizer(tokenizer)
    if detected is not None and detected != setting:
        logger.warning("model.template=%s but the app will detect %s for this tokenizer and refuse the adapter",
                       setting, detected)
    return template


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


def load_splits(cfg: FinetuneConfig) -> tuple[list[Conversation], list[Conversation], dict[str, Any]]:
    """(train, dev, description for rag_adapter.json) from ``cfg.data``."""
    data = cfg.data

    def read(names: Sequence[str], max_samples: int) -> Any:
        specs = [resolve_dataset(name, data.dataset_dir, data.format) for name in names]
        return check(load_conversations(specs, data.system, data.feedback_context, max_samples), data.on_bad_record)

    loaded = read(data.datasets, data.max_samples)
    if data.dev_datasets:
        train, dev = loaded.conversations, read(data.dev_datasets, 0).conversations
    else:
        train, dev = split_dev(loaded.conversations, data.dev_ratio, data.dev_max_samples, cfg.seed)
    described = {"dataset": ",".join(data.datasets), "dataset_sha256": loaded.sha256(),
                 "dataset_files": [str(p) for p in loaded.files], "bad_records_skipped": len(loaded.bad)}
    return train, dev, described


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


# --- trainer ------------------------------------------------------------------------------------------------------


def trainer_arguments(cfg: FinetuneConfig, precision: str, has_dev: bool, output_dir: Path) -> Any:
    """The ``SFTConfig`` for ``cfg`` (a ``TrainingArguments`` with TRL's packing options)."""
    import torch
    from trl import SFTConfig

    t, e = cfg.train, cfg.eval
    evaluate = e.steps > 0 and has_dev
    early_stop = evaluate and e.early_stop_patience > 0
    metric = "eval_loss" if e.early_stop_metric == "loss" else f"eval_{e.early_stop_metric}"
    use_cpu = t.device == "cpu"
    max_length = cfg.data.max_input_tokens + cfg.data.max_output_tokens if cfg.data.max_output_tokens else None
    return SFTConfig(
        output_dir=str(output_dir), seed=cfg.seed, data_seed=cfg.seed, use_cpu=use_cpu,
        max_steps=t.max_steps if t.max_steps > 0 else -1, num_train_epochs=t.epochs,
        per_device_train_batch_size=t.micro_batch_size, per_device_eval_batch_size=e.batch_size,
        gradient_accumulation_steps=t.grad_accum_steps, learning_rate=t.learning_rate, weight_decay=t.weight_decay,
        lr_scheduler_type="constant_with_warmup" if t.lr_scheduler == "constant" else t.lr_scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio, max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16", fp16=precision == "fp16",
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if t.batching == "length" else "random",
        packing=False, max_length=max_length, shuffle_dataset=False, torch_compile=t.compile,
        logging_steps=t.logging_steps, logging_first_step=True,
        eval_strategy="steps" if evaluate else "no", eval_steps=e.steps if evaluate else None,
        save_strategy="steps" if t.save_steps > 0 else "no", save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit or None,
        load_best_model_at_end=early_stop, metric_for_best_model=metric if early_stop else None,
        greater_is_better=e.early_stop_metric != "loss" if early_stop else None,
        optim="adamw_torch_fused" if torch.cuda.is_available() and not use_cpu else "adamw_torch",
        dataloader_num_workers=t.dataloader_workers, ddp_find_unused_parameters=False,
        report_to="none", disable_tqdm=True, save_only_model=False,
        remove_unused_columns=False,  # packed rows carry position_ids, which TRL's column filter would drop
    )


def make_trainer(cfg: FinetuneConfig, model: Any, tokenizer: Any, template: ChatTemplate, args: Any,
                 train_rows: list[dict[str, list[int]]], dev_rows: list[dict[str, list[int]]],
                 generation_sample: Sequence[Conversation], show_progress: bool) -> Any:
    """TRL's SFTTrainer on already-tokenized rows (labels made by our templates), with LoRA from ``cfg.lora``."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import EarlyStoppingCallback, PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    class RecipeTrainer(SFTTrainer):  # type: ignore[misc]
        """Adds BLEU-4 / ROUGE of greedy answers to every evaluation's metrics. Done in ``log`` because the eval
        metrics dict is logged first and then handed, the same object, to early stopping and best-model tracking."""

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "eval_loss" in logs and generation_sample:
                logs.update({f"eval_{k}": v for k, v in self.generation_metrics().items()})
            super().log(logs, start_time)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            real = inputs.pop("num_real_tokens", None)  # set by PackedCollator; the model must not see it
            before = getattr(self, "_total_train_tokens", None)
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if real is not None and before is not None and model.training:
                # TRL counts a batch with position_ids as ONE flattened row (its padding-free layout); ours is
                # [rows, length], so the tokens/s and train_tokens it reports would be rows times too low
                self._total_train_tokens = before + int(self.accelerator.gather_for_metrics(real.reshape(1)).sum())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return result

        def generation_metrics(self) -> dict[str, float]:
            from accelerate.utils import gather_object

            rank, world = self.accelerator.process_index, self.accelerator.num_processes
            shard = list(generation_sample)[rank::world]
            model = self.accelerator.unwrap_model(self.model)
            answers = generate_answers(model, tokenizer, template, shard, cfg.eval.max_new_tokens,
                                       cfg.eval.generate_batch_size)
            pairs = gather_object([(a, c.messages[-1].content) for a, c in zip(answers, shard, strict=True)])
            return score([p for p, _ in pairs], [r for _, r in pairs])

    lora = cfg.lora
    targets: Any = "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                             bias="none", task_type="CAUSAL_LM")
    callbacks: list[Any] = [EarlyStoppingCallback(cfg.eval.early_stop_patience)] if args.load_best_model_at_end else []
    collator = None
    if cfg.train.batching == "packing":  # our row packing, not TRL's padding-free one: see finetune/packing.py
        max_length = cfg.data.max_input_tokens + cfg.data.max_output_tokens
        train_rows, dev_rows = pack_rows(train_rows, max_length, cfg.seed), pack_rows(dev_rows, max_length, cfg.seed)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        collator = PackedCollator(pad_id, pad_to_multiple_of=max_length if cfg.train.compile else None)
    trainer = RecipeTrainer(
        model=model, args=args, processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(dev_rows) if dev_rows else None,
        data_collator=collator,
    )
    if args.bf16 or args.fp16:
        keep_adapter_inputs_in_autocast_dtype(trainer.model)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if show_progress and trainer.is_world_process_zero():
        trainer.add_callback(progress_bar_callback())
    return trainer


def keep_adapter_inputs_in_autocast_dtype(model: Any) -> None:
    """Under bf16/fp16 autocast, stop peft from casting each LoRA input to the float32 adapter dtype: autocast casts it
    straight back for the matmul, so the result is bit-identical, but the two casts of a full activation per adapted
    layer cost about a tenth of a 6B LoRA step (docs/BENCHMARKS.md). The adapter weights stay float32."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False


def progress_bar_callback() -> Any:
    """A tqdm bar over optimizer steps showing the last logged loss and the tokens/s since the previous log."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class ProgressBar(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.bar: Any = None
            self.last = (0.0, 0)  # (time, tokens) at the previous log

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True)
            self.last = (time.perf_counter(), 0)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            logs = logs or {}
            if self.bar is None:
                return
            if "loss" in logs:
                now, tokens = time.perf_counter(), int(logs.get("num_tokens", 0))
                rate = (tokens - self.last[1]) / max(now - self.last[0], 1e-9) if self.last[1] else 0.0
                self.last = (now, tokens)
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
            if "eval_loss" in logs:
                shown = {k.removeprefix("eval_"): round(float(v), 4) for k, v in logs.items()
                         if k in ("eval_loss", "eval_bleu-4", "eval_rouge-l")}
                self.bar.write(f"step {state.global_step}: eval {shown}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.close()

    return ProgressBar()


# --- reports and registration -------------------------------------------------------------------------------------


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


# --- the recipe ---------------------------------------------------------------------------------------------------


def train(cfg: FinetuneConfig, show_progress: bool = False) -> RunResult:
    """Run the recipe ``cfg``: see the module docstring. Returns where the adapter went and its final metrics."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    set_seed(cfg.seed)
    output_dir = cfg.output_path

    # 1. data: every record -> a validated conversation; a held-out dev split
    train_conversations, dev_conversations, dataset = load_splits(cfg)

    # 2. the base model exactly as the app will load it, and the app's chat template for it
    base = find_base_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(str(base.folder), local_files_only=True)
    template = pick_template(cfg.model.template, tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = template.eos_token

    # 3. ids + labels (loss only on assistant turns) with the serving template code
    limits = (cfg.data.max_input_tokens, cfg.data.max_output_tokens)
    train_data = tokenize_all(train_conversations, template, tokenizer, *limits)
    dev_data = tokenize_all(dev_conversations, template, tokenizer, *limits)
    if not train_data.rows:
        raise ConfigError(f"no training example fits data.max_input_tokens={cfg.data.max_input_tokens}")
    logger.info("train: %d conversations, %d tokens (%d trimmed, %d answers cut, %d skipped); dev: %d",
                len(train_data.rows), train_data.tokens, train_data.trimmed, train_data.cut, train_data.skipped,
                len(dev_data.rows))

    # 4. model + LoRA, precision and the trainer
    use_cpu = cfg.train.device == "cpu"
    precision = pick_precision(cfg.train.precision, use_cpu)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model = AutoModelForCausalLM.from_pretrained(str(base.folder), dtype=dtype, local_files_only=True,
                                                 attn_implementation=cfg.model.attn_implementation)
    check_targets(model, cfg.lora.target_modules)
    args = trainer_arguments(cfg, precision, bool(dev_data.rows), output_dir)
    sample = dev_data.conversations[: cfg.eval.generate_samples]
    trainer = make_trainer(cfg, model, tokenizer, template, args, train_data.rows, dev_data.rows, sample,
                           show_progress)

    # 5. train, resuming from a checkpoint when asked
    resume = resume_checkpoint(cfg.train.resume, output_dir, get_last_checkpoint)
    started = time.perf_counter()
    with torch_threads(cfg.train.cpu_threads):
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started

    # 6. the adapter, its metadata and the reports (main process only)
    best = trainer.state.best_model_checkpoint if args.load_best_model_at_end else None
    metrics = summarize(trainer.state.log_history, int(best.rsplit("-", 1)[-1]) if best else None)
    adapter_dir = None
    if trainer.is_world_process_zero():
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() and not use_cpu else 0.0
        facts = {"run": cfg.name, "base_model": base.model_id, "base_origin": base.origin, "template": template.name,
                 "precision": precision, "processes": trainer.accelerator.num_processes,
                 "seconds": round(seconds, 1), "steps": trainer.state.global_step,
                 "tokens_per_second": round(metrics.get("train_tokens", 0.0) / max(seconds, 1e-9), 1),
                 "peak_gpu_memory_gib": round(peak, 2), "train_examples": len(train_data.rows),
                 "dev_examples": len(dev_data.rows), "resumed_from": str(resume or ""),
                 "best_checkpoint": best or "", **dataset}
        write_reports(output_dir, trainer.state.log_history, facts)
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        unwrapped.peft_config["default"].base_model_name_or_path = base.model_id
        target = (Path(cfg.output.adapters_dir).expanduser() / cfg.adapter_name if cfg.output.register
                  else output_dir / "adapter")
        target.parent.mkdir(parents=True, exist_ok=True)
        adapter_dir = register_adapter(unwrapped, target, {
            "name": cfg.adapter_name, "base_model": base.model_id, "base_revision": base.revision,
            "template": template.name, "dataset": dataset["dataset"], "dataset_sha256": dataset["dataset_sha256"],
            "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
            "training": training_facts(cfg, precision, trainer.state.global_step), "run_dir": str(output_dir),
        })
        logger.info("adapter %s written to %s", cfg.adapter_name, adapter_dir)
    trainer.accelerator.wait_for_everyone()
    return RunResult(adapter_dir, output_dir, metrics)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (0 = leave as is). A tiny model's ops are too small to split: on a busy
    2-core machine two threads made the tiny run 7x slower than one."""
    import torch

    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resume_checkpoint(setting: str, output_dir: Path, last_checkpoint: Any) -> Path | None:
    """``train.resume``: "" -> None, ``auto`` -> the newest ``checkpoint-N`` in ``output_dir`` (None if there is
    none), else that folder (which must exist)."""
    if not setting:
        if output_dir.is_dir() and last_checkpoint(str(output_dir)):
            logger.warning("%s holds checkpoints; train.resume=auto continues from the newest", output_dir)
        return None
    if setting == "auto":
        found = last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if found is None:
            logger.info("train.resume=auto: no checkpoint in %s, starting fresh", output_dir)
        return Path(found) if found else None
    path = Path(setting).expanduser()
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"train.resume={setting} is not a checkpoint folder (no trainer_state.json); use "
                          f"train.resume=auto or a {output_dir}/checkpoint-N folder")
    return path


def training_facts(cfg: FinetuneConfig, precision: str, steps: int) -> dict[str, Any]:
    """The hyper-parameters recorded in rag_adapter.json."""
    return {"steps": steps, "seed": cfg.seed, "precision": precision, **dataclasses.asdict(cfg.train),
            "max_input_tokens": cfg.data.max_input_tokens, "max_output_tokens": cfg.data.max_output_tokens,
            "lora": dataclasses.asdict(cfg.lora)}
