"""The trainer the recipe hands its tokenized rows to: TRL's ``SFTTrainer`` configured from a :class:`FinetuneConfig`.

Kept apart from :mod:`finetune.train` so the recipe stays a short top-to-bottom read while the library plumbing lives
here: the ``SFTConfig`` mapping of ``train.*`` / ``eval.*``, the trainer subclass that adds BLEU/ROUGE of greedy answers
to each evaluation and counts packed tokens correctly, the tqdm bar with tokens/s, and the run-time helpers (resume
checkpoint, CPU thread count). ``bench/train_speed.py`` builds its trainer through the same two functions, so the
benchmark measures exactly what ``python -m finetune train`` runs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from finetune.config import FinetuneConfig
from finetune.data.load import Conversation
from finetune.evaluate import generate_answers, score
from finetune.fused_lora import fuse_lora_additions
from finetune.packing import PackedCollator, pack_rows
from finetune.regional_compile import compile_decoder_layers, eager
from rag.core.errors import ConfigError
from rag.models.templates import ChatTemplate

logger = logging.getLogger(__name__)


def trainer_arguments(cfg: FinetuneConfig, precision: str, has_dev: bool, output_dir: Path) -> Any:
    """The ``SFTConfig`` for ``cfg`` (a ``TrainingArguments`` with TRL's packing options)."""
    from trl import SFTConfig

    max_length = cfg.data.max_input_tokens + cfg.data.max_output_tokens if cfg.data.max_output_tokens else None
    # compiled layers over padded / length-grouped batches: widths rounded to 64 tokens, so a handful of shapes
    # compile once each instead of one compile per batch width (packed rows are padded to the full row length)
    rounded = 64 if compiles_layers(cfg) and cfg.train.batching != "packing" else None
    return SFTConfig(**shared_arguments(cfg, precision, has_dev, output_dir), max_length=max_length,
                     pad_to_multiple_of=rounded,
                     train_sampling_strategy="group_by_length" if cfg.train.batching == "length" else "random",
                     packing=False, shuffle_dataset=False)


def shared_arguments(cfg: FinetuneConfig, precision: str, has_dev: bool, output_dir: Path) -> dict[str, Any]:
    """``train.*`` / ``eval.*`` as ``TrainingArguments`` keywords, the same for every stage's TRL config."""
    import torch

    t, e = cfg.train, cfg.eval
    evaluate = e.steps > 0 and has_dev
    early_stop = evaluate and e.early_stop_patience > 0
    metric = "eval_loss" if e.early_stop_metric == "loss" else f"eval_{e.early_stop_metric}"
    use_cpu = t.device == "cpu"
    return dict(
        output_dir=str(output_dir), seed=cfg.seed, data_seed=cfg.seed, use_cpu=use_cpu,
        max_steps=t.max_steps if t.max_steps > 0 else -1, num_train_epochs=t.epochs,
        per_device_train_batch_size=t.micro_batch_size, per_device_eval_batch_size=e.batch_size,
        gradient_accumulation_steps=t.grad_accum_steps, learning_rate=t.learning_rate, weight_decay=t.weight_decay,
        lr_scheduler_type="constant_with_warmup" if t.lr_scheduler == "constant" else t.lr_scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio, max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16", fp16=precision == "fp16",
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        torch_compile=t.compile,
        logging_steps=t.logging_steps, logging_first_step=True,
        eval_strategy="steps" if evaluate else "no", eval_steps=e.steps if evaluate else None,
        save_strategy="steps" if t.save_steps > 0 else "no", save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit or None,
        load_best_model_at_end=early_stop, metric_for_best_model=metric if early_stop else None,
        greater_is_better=e.early_stop_metric != "loss" if early_stop else None,
        optim="adamw_torch_fused" if torch.cuda.is_available() and not use_cpu else "adamw_torch",
        dataloader_num_workers=t.dataloader_workers, ddp_find_unused_parameters=False,
        **fsdp_arguments(t.fsdp),
        report_to="none", disable_tqdm=True, save_only_model=False,
        remove_unused_columns=False,  # packed rows carry position_ids, which TRL's column filter would drop
    )


def fsdp_arguments(mode: str) -> dict[str, Any]:
    """``train.fsdp`` -> the Trainer's FSDP arguments: shard every decoder layer (found by the model's own
    ``_no_split_modules``), keep the original parameters so that only the LoRA weights train, and gather the full
    adapter state on rank 0 when saving. Empty -> plain DDP."""
    if not mode:
        return {}
    check_fsdp_possible(mode)
    return {"fsdp": f"{mode} auto_wrap",
            "fsdp_config": {"use_orig_params": True, "sync_module_states": True, "cpu_ram_efficient_loading": False,
                            "state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": False}}


def check_fsdp_possible(mode: str) -> None:
    """accelerate shards only over CUDA GPUs: on CPU, or with one process, ``train.fsdp`` would silently fall back to
    DDP or a single process holding the whole model, so say so before loading anything."""
    import torch
    from accelerate import PartialState

    processes = PartialState().num_processes
    if not torch.cuda.is_available() or processes < 2:
        where = "no CUDA GPU" if not torch.cuda.is_available() else "1 process"
        raise ConfigError(f"train.fsdp={mode} shards the model over several CUDA GPUs, one process each "
                          f"(accelerate launch -m finetune train ... or torchrun --nproc_per_node N ...); here there "
                          f"is {where}. Leave train.fsdp empty (DDP / one GPU), or use "
                          f"train.gradient_checkpointing=true and a smaller train.micro_batch_size to fit one GPU")


def make_trainer(cfg: FinetuneConfig, model: Any, tokenizer: Any, template: ChatTemplate, args: Any,
                 train_rows: list[dict[str, list[int]]], dev_rows: list[dict[str, list[int]]],
                 generation_sample: Sequence[Conversation], show_progress: bool) -> Any:
    """TRL's SFTTrainer on already-tokenized rows (labels made by our templates), with LoRA from ``cfg.lora``."""
    import torch
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    class RecipeTrainer(SFTTrainer):  # type: ignore[misc]
        """Adds BLEU-4 / ROUGE of greedy answers to every evaluation's metrics. Done in ``log`` because the eval
        metrics dict is logged first and then handed, the same object, to early stopping and best-model tracking."""

        def evaluate(self, *args: Any, **kwargs: Any) -> Any:
            with eager():  # compiled layers: see finetune/regional_compile.py
                return super().evaluate(*args, **kwargs)

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
                # [rows, length], so the tokens/s and train_tokens it reports would be rows times too low. The count
                # is a host int (PackedCollator); only several processes need a (GPU-waiting) gather
                if self.accelerator.num_processes > 1:
                    real = self.accelerator.gather_for_metrics(torch.tensor([int(real)], device=self.args.device)).sum()
                self._total_train_tokens = before + int(real)
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return result

        def floating_point_ops(self, inputs: dict[str, Any]) -> int:
            # the Trainer's 6 x parameters x tokens, with the parameter count taken once: transformers walks every
            # module and parameter of the model for it at each step, CPU time in which the GPU can run dry
            ids = inputs.get("input_ids")
            if not torch.is_tensor(ids):
                return int(super().floating_point_ops(inputs))
            per_token = getattr(self, "_flops_per_token", None)
            if per_token is None:
                per_token = self._flops_per_token = super().floating_point_ops(inputs) / max(1, ids.numel())
            return int(per_token * ids.numel())

        def generation_metrics(self) -> dict[str, float]:
            from accelerate.utils import gather_object

            rank, world = self.accelerator.process_index, self.accelerator.num_processes
            shard = list(generation_sample)[rank::world]
            model = self.accelerator.unwrap_model(self.model)
            answers = generate_answers(model, tokenizer, template, shard, cfg.eval.max_new_tokens,
                                       cfg.eval.generate_batch_size)
            pairs = gather_object([(a, c.messages[-1].content) for a, c in zip(answers, shard, strict=True)])
            return score([p for p, _ in pairs], [r for _, r in pairs])

    peft_config = lora_config(cfg)
    callbacks: list[Any] = [EarlyStoppingCallback(cfg.eval.early_stop_patience)] if args.load_best_model_at_end else []
    collator = None
    if cfg.train.batching == "packing":  # our row packing, not TRL's padding-free one: see finetune/packing.py
        max_length = cfg.data.max_input_tokens + cfg.data.max_output_tokens
        train_rows, dev_rows = pack_rows(train_rows, max_length, cfg.seed), pack_rows(dev_rows, max_length, cfg.seed)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        fixed_shape = cfg.train.compile or compiles_layers(cfg)  # a new row length would recompile
        collator = PackedCollator(pad_id, pad_to_multiple_of=max_length if fixed_shape else None)
    trainer = RecipeTrainer(
        model=model, args=args, processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(dev_rows) if dev_rows else None,
        data_collator=collator,
    )
    return finish_trainer(trainer, cfg, args, show_progress)


def compiles_layers(cfg: FinetuneConfig) -> bool:
    """``train.compile_layers`` resolved. ``auto`` compiles where compiling is expected to pay (compiling the whole
    model took the recipe from 29.8 % to 40.7 % of executed FLOPs on an H100 after ~2.5 min of compiling; compiled
    layers take it from 31.4 % to 43.3 % after 12 s, docs/BENCHMARKS.md): SFT on a CUDA GPU, unquantised base, no gradient checkpointing, not already compiling
    the whole model, packed rows (one shape). Everywhere else the step stays eager: CPU (no C++ build for a tiny run),
    bitsandbytes layers and checkpointed layers (untested under compile here), padded or length-grouped batches and
    the preference stages (a new batch width is a new compile: padded SFT at micro-batch 8 ran 651 tokens/s
    compiled on an H100, bench/results/train_speed_h100_stages.jsonl, where eager had made 3,690 on an H200)."""
    import torch

    setting = cfg.train.compile_layers
    if setting != "auto":
        return bool(setting)
    t = cfg.train
    return (cfg.stage == "sft" and t.batching == "packing" and not cfg.model.quantization
            and not t.gradient_checkpointing and not t.compile and t.device != "cpu" and torch.cuda.is_available())


def lora_config(cfg: FinetuneConfig) -> Any:
    """peft's ``LoraConfig`` from ``cfg.lora``."""
    from peft import LoraConfig

    lora = cfg.lora
    targets: Any = "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


def finish_trainer(trainer: Any, cfg: FinetuneConfig, args: Any, show_progress: bool) -> Any:
    """What every stage's trainer gets after construction (peft has put its LoRA layers in by now): adapter inputs
    kept in the autocast dtype, LoRA updates added inside their GEMM (``train.fused_lora``), the decoder layers
    compiled (``train.compile_layers``), our progress bar instead of transformers' printer."""
    from transformers import PrinterCallback, ProgressCallback

    if args.bf16 or args.fp16:
        keep_adapter_inputs_in_autocast_dtype(trainer.model)
    if cfg.train.fused_lora:
        fuse_lora_additions(trainer.model)
    if compiles_layers(cfg):
        compile_decoder_layers(trainer.model)
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


# --- running it ---------------------------------------------------------------------------------------------------


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
