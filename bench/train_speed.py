"""LoRA training throughput: the finetune recipe (``finetune.trainer``'s TRL trainer) vs a naive transformers + peft loop.

ChatGLM3-6B's shape as transformers' native ``GlmForCausalLM`` (6.24 B parameters), random bf16 weights made on the
GPU, LoRA r 8 / alpha 32 on every linear layer of the blocks (q, k, v, o, gate_up, down). Both sides train on the
same synthetic data mix (token ids are random; only the lengths matter for speed): conversations of at most 128
prompt + 256 answer tokens, the seed's limits, with loss on the answer tokens only:

    ad copy (AdvertiseGen-like)  50 %   prompt 20-60 tokens,  answer 50-150
    counselling / helpdesk       30 %   prompt 40-128 tokens, answer 100-256
    long answers                 20 %   prompt 100-128,       answer 200-256

Modes, each in its own child process (clean peak-memory figures; an out-of-memory one cannot take the others down):

    naive    the seed's configuration done by hand: batch 1 (one conversation per step), eager attention, plain
             ``torch.optim.AdamW``, LoRA dropout 0.1, no packing
    recipe   ``finetune.trainer.trainer_arguments`` + ``make_trainer`` exactly as ``python -m finetune train`` builds them
             from ``configs/finetune/chatglm3_lora_fast.yaml`` (the seed's model, LoRA shape and lengths with the
             recipe's defaults: 12 packed rows of 384 tokens, no LoRA dropout, SDPA attention, bf16 autocast, fused
             AdamW); a variant ``recipe:key=value,...`` overrides any key, e.g. ``recipe:lora.dropout=0.1``

    recipe:stage=dpo / recipe:stage=kto   the preference stages (finetune.preference) on pairs / judged answers made
             from the same mix (rejected = another answer of similar length), reference = the base with the adapter
             disabled, micro-batch 4 pairs (8 sequences) unless overridden
    recipe:model.quantization=4bit,train.micro_batch_size=4   QLoRA: the block linears replaced by bitsandbytes NF4
             (double quantisation, bf16 compute) in place, then prepared as the recipe prepares a k-bit base

Tokens/s counts real (non-padding) tokens after ``--warmup`` steps. Utilisation, honestly:

- ``flops_per_token``: the FLOPs one training step executes (forward + backward of one batch, the DPO/KTO reference
  forward included), counted by ``torch.utils.flop_counter.FlopCounterMode`` and divided by the batch's real tokens;
  ``executed_flop_utilisation`` = flops_per_token x tokens/s / peak bf16 FLOP/s (989.4 TFLOP/s dense on an H100
  SXM; ``--peak-tflops``). LoRA runs no weight-gradient GEMMs for the frozen weights, so this is ~4 x N per token,
  not 6 x N.
- ``analytic_flops_per_token`` (SFT modes): forward GEMMs + activation-gradient GEMMs of every linear layer and the
  output layer, LoRA's three GEMMs per adapted layer, and attention's score / value products over the padded row
  length, forward and backward; ``analytic_vs_counted`` is its ratio to the counter's figure.
- ``mfu_6n``: 6 x parameters x tokens/s / peak, kept only as the common convention (it counts weight gradients
  that LoRA never computes, so it overstates utilisation by ~1.5x).

The recipe child also checks that packing changes nothing: the loss of its first packed batch against the same
conversations run one at a time (token-weighted), before any training step.

    python bench/train_speed.py                             # full shape, CUDA GPU, ~40 GB
    python bench/train_speed.py --small --steps 4 --warmup 1 # tiny shape on CPU in seconds (smoke test)
    python bench/train_speed.py --variants "recipe;recipe:stage=dpo;recipe:model.quantization=4bit,train.micro_batch_size=4"
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.decode import CHATGLM3_6B, build_model  # noqa: E402  (the same random ChatGLM3-6B-shaped model)

SMALL = {"vocab_size": 1024, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 1024}
MIX = ((0.5, (20, 60), (50, 150)), (0.3, (40, 128), (100, 256)), (0.2, (100, 128), (200, 256)))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]


def data_mix(n: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    """``n`` rows of ``input_ids`` / ``labels`` (-100 on the prompt) with the lengths of the mix above."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pick, acc, kind = rng.random(), 0.0, MIX[-1]
        for kind in MIX:
            acc += kind[0]
            if pick <= acc:
                break
        prompt, answer = rng.randint(*kind[1]), rng.randint(*kind[2])
        ids = [rng.randrange(10, vocab) for _ in range(prompt + answer)]
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def params_of(shape: dict[str, int]) -> int:
    """Parameters of the GLM shape (embedding and output layer included, as the 6.24 B figure does)."""
    h, f, layers, v = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    attention = h * q + q + 2 * (h * kv + kv) + q * h
    mlp = h * 2 * f + f * h
    return layers * (attention + mlp + 2 * h) + 2 * v * h + h


def analytic_step_flops(shape: dict[str, int], lora_r: int, targets: list[str], rows: int, length: int,
                        attn: str) -> float:
    """FLOPs of one LoRA training step on ``rows`` padded rows of ``length`` positions (see the module docstring):
    2 x MACs for each forward GEMM, the same again for the activation gradients (none for frozen weights), LoRA's
    A/B GEMMs forward (2 r (d_in + d_out)) and backward (activation and weight gradients, twice that), attention's
    QK^T and PV over the row (forward 4 L^2 d_q per row and layer; backward twice that for eager attention, 2.5 times
    for the fused SDPA kernels, which recompute the scores). Layer 0's q/k/v read the embeddings, which need no
    gradient, so their input gradients are not computed."""
    h, f, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    linears = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * f),
               "down_proj": (f, h)}
    per_position = 0.0
    for name, (d_in, d_out) in linears.items():
        per_position += 4 * d_in * d_out  # forward + input gradient
        if name in targets:
            per_position += 6 * lora_r * (d_in + d_out)
    per_position *= shape["num_hidden_layers"]
    for name in ("q_proj", "k_proj", "v_proj"):  # layer 0: no gradient for the embeddings' side
        d_in, d_out = linears[name]
        per_position -= 2 * d_in * d_out + (2 * lora_r * d_in if name in targets else 0)
    per_position += 4 * h * v  # the output layer, forward + input gradient
    backward = 8 if attn == "eager" else 10  # fused kernels recompute Q K^T in the backward pass
    attention = (4 + backward) * length * length * q * shape["num_hidden_layers"]  # per row
    return rows * length * per_position + rows * attention


def counted_step_flops(run_step: Any) -> float:
    """FLOPs that ``run_step()`` (a forward + backward) executes, by torch's FLOP counter."""
    import torch
    from torch.utils import flop_counter
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    for op, formula in ((aten._scaled_dot_product_flash_attention_for_cpu, flop_counter.sdpa_flop),
                        (aten._scaled_dot_product_flash_attention_for_cpu_backward, flop_counter.sdpa_backward_flop)):
        if op not in flop_counter.flop_registry:  # torch counts the CUDA SDPA kernels but not the CPU one (--small)
            flop_counter.register_flop_formula(op, get_raw=True)(formula)
    with FlopCounterMode(display=False) as counter:
        run_step()
    return float(counter.get_total_flops())


def trainer_step_flops(trainer: Any) -> tuple[float, int, tuple[int, int]]:
    """(FLOPs, real tokens, (rows, padded length)) of one training step on the trainer's first batch: its own
    ``compute_loss`` (the preference stages' reference forward included) and backward, gradients dropped after."""
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ids = batch["input_ids"]
    real = batch.get("num_real_tokens")
    tokens = int(real) if real is not None else int(batch["attention_mask"].sum())
    model = trainer.model
    model.eval()  # no token bookkeeping, no dropout: the GEMMs are the same

    def step() -> None:
        with trainer.compute_loss_context_manager(), trainer.accelerator.autocast():  # bf16 autocast, as in training
            loss = trainer.compute_loss(model, dict(batch))
        loss.backward()

    flops = counted_step_flops(step)
    model.zero_grad(set_to_none=True)
    model.train()
    return flops, tokens, (int(ids.shape[0]), int(ids.shape[1]))


def utilisation(flops_per_token: float, tokens_per_s: float, peak_tflops: float) -> float:
    return round(flops_per_token * tokens_per_s / (peak_tflops * 1e12), 4)


class Meter:
    """Tokens and wall time from step ``warmup`` on (GPU work synchronised at every mark)."""

    def __init__(self, warmup: int, cuda: bool) -> None:
        self.warmup, self.cuda = warmup, cuda
        self.start: tuple[float, int] | None = None
        self.last: tuple[float, int] = (0.0, 0)
        self.losses: list[float] = []

    def mark(self, step: int, tokens: int, loss: float) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        self.losses.append(round(loss, 4))
        if step == self.warmup:
            self.start = (now, tokens)
        self.last = (now, tokens)

    def rate(self) -> tuple[float, int, float]:
        if self.start is None:
            raise RuntimeError(f"fewer than warmup={self.warmup} steps ran")
        seconds, tokens = self.last[0] - self.start[0], self.last[1] - self.start[1]
        return tokens / max(seconds, 1e-9), tokens, seconds


def run_naive(args: argparse.Namespace, shape: dict[str, int], device: Any, dtype: Any) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    model = build_model(shape, device, dtype, "eager")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    rows = data_mix(args.steps + 1, shape["vocab_size"], args.seed)
    first = (torch.tensor([rows[0]["input_ids"]], device=device), torch.tensor([rows[0]["labels"]], device=device))
    flops = counted_step_flops(lambda: model(input_ids=first[0], labels=first[1]).loss.backward())
    model.zero_grad(set_to_none=True)
    analytic = analytic_step_flops(shape, 8, TARGETS, 1, first[0].shape[1], "eager")
    meter, seen = Meter(args.warmup, device.type == "cuda"), 0
    for step, row in enumerate(rows[: args.steps], start=1):
        ids = torch.tensor([row["input_ids"]], device=device)
        labels = torch.tensor([row["labels"]], device=device)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(row["input_ids"])
        meter.mark(step, seen, float(loss))
    rate, tokens, seconds = meter.rate()
    return {"tokens_per_s": round(rate, 1), "tokens": tokens, "seconds": round(seconds, 2),
            "batch": "1 conversation, no padding", "first_losses": meter.losses[:5],
            "flops_per_token": round(flops / first[0].shape[1]),
            "analytic_vs_counted": round(analytic / flops, 4)}


def recipe_parts(args: argparse.Namespace, shape: dict[str, int], device: Any, dtype: Any) -> tuple[Any, ...]:
    """The recipe's own config, trainer arguments and trainer over the random model."""
    import tempfile

    import torch
    from transformers import TrainerCallback

    from finetune.config import load_finetune_config
    from finetune.tiny import build_tokenizer
    from finetune.trainer import make_trainer, trainer_arguments
    from rag.models.templates import get_template

    overrides = [f"train.max_steps={args.steps}", "train.logging_steps=1", "train.save_steps=0", "eval.steps=0",
                 "output.register=false", *args.set]
    if device.type == "cpu":
        overrides += ["train.device=cpu", "train.precision=fp32"]
    cfg = load_finetune_config(ROOT / "configs" / "finetune" / "chatglm3_lora_fast.yaml", overrides)
    work = Path(tempfile.mkdtemp(prefix="train_speed_"))
    template = get_template("chatglm3")
    tokenizer = build_tokenizer(work / "tok", "chatglm3", texts=["你好 hello world"] * 4, vocab_size=300)
    tokenizer.pad_token = template.eos_token
    model = build_model(shape, device, dtype, cfg.model.attn_implementation)
    precision = "bf16" if device.type == "cuda" else "fp32"
    targs = trainer_arguments(cfg, precision, False, work / "run")
    if cfg.model.quantization:
        from finetune.base_model import quantization_settings

        quantization_settings(cfg.model.quantization, precision, device.type == "cpu")  # refuses on CPU, in one line
        model = quantize_block_linears(model, cfg.model.quantization, dtype)
        torch.cuda.reset_peak_memory_stats()  # the recipe loads k-bit layer by layer: no bf16 copy of the model
    rows = data_mix(args.rows, shape["vocab_size"], args.seed)
    meter = Meter(args.warmup, device.type == "cuda")

    class Timing(TrainerCallback):  # type: ignore[misc]
        def on_log(self, a: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs and "num_tokens" in logs:
                meter.mark(state.global_step, int(logs["num_tokens"]), float(logs["loss"]))

    if cfg.stage == "sft":
        trainer = make_trainer(cfg, model, tokenizer, template, targs, rows, [], [], show_progress=False)
    else:
        from finetune.preference import make_preference_trainer, preference_arguments

        targs = preference_arguments(cfg, precision, False, work / "run")
        trainer = make_preference_trainer(cfg, model, tokenizer, targs, preference_rows(rows, cfg.stage, args.seed),
                                          [], show_progress=False)
    trainer.add_callback(Timing())
    return cfg, trainer, meter


def preference_rows(rows: list[dict[str, list[int]]], stage: str, seed: int) -> list[dict[str, Any]]:
    """The mix as DPO pairs (rejected = the next conversation's answer: a similar length distribution) or KTO
    judgements (every other answer undesirable)."""
    out: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        start = row["labels"].index(next(x for x in row["labels"] if x != -100))
        other = rows[(index + 1) % len(rows)]
        other_start = other["labels"].index(next(x for x in other["labels"] if x != -100))
        prompt, answer = row["input_ids"][:start], row["input_ids"][start:]
        if stage == "dpo":
            out.append({"prompt_ids": prompt, "chosen_ids": answer, "rejected_ids": other["input_ids"][other_start:]})
        else:
            out.append({"prompt_ids": prompt, "completion_ids": answer, "label": index % 2 == 0})
    return out


def quantize_block_linears(model: Any, kind: str, compute_dtype: Any) -> Any:
    """QLoRA on the random model: every linear layer of the decoder blocks becomes a bitsandbytes 4-bit (NF4, double
    quantisation) or 8-bit layer holding the same weights, as ``from_pretrained(quantization_config=...)`` would
    load them; then peft's ``prepare_model_for_kbit_training``, as the recipe does (finetune.base_model)."""
    import bitsandbytes as bnb
    import torch
    from peft import prepare_model_for_kbit_training

    for block in model.model.layers:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                bias = child.bias is not None
                if kind == "4bit":
                    new: Any = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=bias, device="meta",
                                                 compute_dtype=compute_dtype, compress_statistics=True,
                                                 quant_type="nf4")
                    new.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                                   quant_type="nf4")
                else:
                    new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=bias, device="meta",
                                              has_fp16_weights=False)
                    new.weight = bnb.nn.Int8Params(child.weight.data, requires_grad=False, has_fp16_weights=False)
                if bias:
                    new.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, new.to(child.weight.device))
    torch.cuda.empty_cache()
    # the flags peft and TRL read; not is_quantized, which makes the Trainer look for from_pretrained's hf_quantizer
    model.is_loaded_in_4bit, model.is_loaded_in_8bit = kind == "4bit", kind == "8bit"
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def packing_check(trainer: Any, device: Any) -> dict[str, Any]:
    """Loss of the first packed batch vs the same conversations one at a time (token-weighted), no training yet."""
    import torch

    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        inputs = {k: v.to(device) for k, v in batch.items() if k != "num_real_tokens"}
        packed = float(model(**inputs).loss)
        if "position_ids" in batch:  # packed rows: cut each row where the positions restart
            pieces = []
            for row in range(batch["input_ids"].shape[0]):
                starts = [*(batch["position_ids"][row] == 0).nonzero().flatten().tolist(), batch["input_ids"].shape[1]]
                pieces += [(batch["input_ids"][row, a:b], batch["labels"][row, a:b])
                           for a, b in zip(starts, starts[1:], strict=False)]
        else:
            mask = batch["attention_mask"].bool()
            pieces = [(batch["input_ids"][i][mask[i]], batch["labels"][i][mask[i]]) for i in range(mask.shape[0])]
        total, count = 0.0, 0
        for ids, labels in pieces:
            n = int((labels[1:] != -100).sum())
            if n:
                out = model(input_ids=ids[None].to(device), labels=labels[None].to(device)).loss
                total, count = total + float(out) * n, count + n
    model.train()
    return {"packed_loss": round(packed, 5), "one_at_a_time_loss": round(total / count, 5),
            "abs_diff": round(abs(packed - total / count), 5), "sequences": len(pieces)}


def run_recipe(args: argparse.Namespace, shape: dict[str, int], device: Any, dtype: Any) -> dict[str, Any]:
    cfg, trainer, meter = recipe_parts(args, shape, device, dtype)
    check = packing_check(trainer, device) if cfg.stage == "sft" else None
    try:
        flops, real, (rows, length) = trainer_step_flops(trainer)
    except Exception as exc:  # a torch whose FLOP counter cannot run this step: the meta count (--count-meta) stands
        extra: dict[str, Any] = {"flops_per_token": None, "flop_count_error": f"{type(exc).__name__}: {exc}"[:200]}
        flops = 0.0
    else:
        extra = {"flops_per_token": round(flops / real), "flop_batch": {"rows": rows, "length": length,
                                                                        "real_tokens": real}}
    if flops and cfg.stage == "sft" and not cfg.model.quantization:
        analytic = analytic_step_flops(shape, cfg.lora.r, cfg.lora.target_modules, rows, length,
                                       cfg.model.attn_implementation)
        extra["analytic_vs_counted"] = round(analytic / flops, 4)
    trainer.train()
    rate, tokens, seconds = meter.rate()
    t = cfg.train
    return {"tokens_per_s": round(rate, 1), "tokens": tokens, "seconds": round(seconds, 2),
            "batching": t.batching, "micro_batch_size": t.micro_batch_size, "grad_accum_steps": t.grad_accum_steps,
            "gradient_checkpointing": t.gradient_checkpointing, "lora_dropout": cfg.lora.dropout,
            "attn": cfg.model.attn_implementation, "optim": trainer.args.optim,
            "tokens_per_step": round(tokens / max(1, args.steps - args.warmup)), "packing_check": check,
            "stage": cfg.stage, "quantization": cfg.model.quantization, "first_losses": meter.losses[:5], **extra}


def meta_counts(args: argparse.Namespace) -> None:
    """``--count-meta``: FLOPs per real token of one training step of naive, recipe and DPO on the full shape,
    counted by FlopCounterMode on meta tensors (shapes only: no GPU, no memory, seconds on a CPU). Naive: the mean
    over the first 16 conversations, one per step, eager attention; recipe: its first packed micro-batch of 12 rows
    (finetune.packing, as make_trainer packs), SDPA; DPO: 4 pairs padded together, the reference forward (adapter
    disabled) plus the policy forward and backward on the 8 sequences."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GlmConfig, GlmForCausalLM

    from finetune.packing import PackedCollator, pack_rows

    shape = SMALL if args.small else CHATGLM3_6B
    n = params_of(shape)

    def model_for(attn: str) -> Any:
        config = GlmConfig(**shape, partial_rotary_factor=0.5, attention_bias=True, rms_norm_eps=1e-5, pad_token_id=0,
                           attn_implementation=attn)
        with torch.device("meta"):
            base = GlmForCausalLM(config).to(torch.bfloat16)
        return get_peft_model(base, LoraConfig(r=8, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM"))

    def line(mode: str, flops: float, tokens: int, **extra: Any) -> None:
        emit({"mode": mode, "counted_on": "meta tensors", "params": n, "flops_per_token": round(flops / tokens),
              "flops_per_token_over_n": round(flops / tokens / n, 3), **extra}, args.out)

    mix = data_mix(max(args.rows, 64), shape["vocab_size"], args.seed)
    eager = model_for("eager")
    flops, tokens = 0.0, 0
    for row in mix[:16]:
        ids, labels = torch.tensor([row["input_ids"]], device="meta"), torch.tensor([row["labels"]], device="meta")
        flops += counted_step_flops(lambda: eager(input_ids=ids, labels=labels).loss.backward())  # noqa: B023
        tokens += len(row["input_ids"])
    analytic = sum(analytic_step_flops(shape, 8, TARGETS, 1, len(r["input_ids"]), "eager") for r in mix[:16])
    line("naive", flops, tokens, analytic_vs_counted=round(analytic / flops, 4))

    model = model_for("sdpa")
    batch = PackedCollator(0)(pack_rows(mix, 384, 42)[:12])
    real = int(batch.pop("num_real_tokens"))
    inputs = {k: v.to("meta") for k, v in batch.items()}
    flops = counted_step_flops(lambda: model(**inputs).loss.backward())
    rows, length = inputs["input_ids"].shape
    analytic = analytic_step_flops(shape, 8, TARGETS, rows, length, "sdpa")
    line("recipe", flops, real, rows=rows, length=length, analytic_vs_counted=round(analytic / flops, 4))

    pairs = preference_rows(mix[:4], "dpo", args.seed)
    sequences = [p["prompt_ids"] + p[k] for k in ("chosen_ids", "rejected_ids") for p in pairs]
    width = max(len(x) for x in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long, device="meta")

    def dpo_step() -> None:
        with torch.no_grad(), model.disable_adapter():
            model(input_ids=ids)
        model(input_ids=ids).logits.float().mean().backward()

    line("dpo", counted_step_flops(dpo_step), sum(len(x) for x in sequences), sequences=len(sequences), length=width)


def child(args: argparse.Namespace) -> None:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = SMALL if args.small else CHATGLM3_6B
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    fields = run_naive(args, shape, device, dtype) if args.child == "naive" else run_recipe(args, shape, device, dtype)
    n = params_of(shape)
    line = {"mode": args.child, "label": args.label or args.child,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "params": n, **fields,
            "executed_flop_utilisation": utilisation(fields["flops_per_token"], fields["tokens_per_s"],
                                                     args.peak_tflops) if fields["flops_per_token"] else None,
            "flops_per_token_over_n": round(fields["flops_per_token"] / n, 3) if fields["flops_per_token"] else None,
            "mfu_6n": utilisation(6 * n, fields["tokens_per_s"], args.peak_tflops),  # the convention, not executed
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
            "wall_s": round(time.perf_counter() - started, 1)}
    print("RESULT " + json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny shape on CPU (smoke test)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per mode")
    parser.add_argument("--warmup", type=int, default=8, help="steps not timed (allocator, kernels, autotuning)")
    parser.add_argument("--rows", type=int, default=4000, help="conversations in the recipe's dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="dense bf16 peak of the GPU")
    parser.add_argument("--variants", default="naive;recipe;recipe:train.compile=true;"
                        "recipe:model.quantization=4bit,train.micro_batch_size=4;"
                        "recipe:stage=dpo,train.batching=padded,train.micro_batch_size=4;"
                        "recipe:stage=kto,train.batching=padded,train.micro_batch_size=8",
                        help="';'-separated runs: naive, recipe, or recipe:key=value,key=value (recipe overrides)")
    parser.add_argument("--naive-steps", type=int, default=0, help="steps for naive (default --steps)")
    parser.add_argument("--out", type=Path, help="also append the JSON lines here")
    parser.add_argument("--count-meta", action="store_true",
                        help="only count FLOPs per token of naive / recipe / dpo on meta tensors (no GPU needed)")
    parser.add_argument("--child", choices=["naive", "recipe"], help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_meta:
        meta_counts(args)
        return
    if args.child:
        child(args)
        return
    results: list[dict[str, Any]] = []
    for variant in [v.strip() for v in args.variants.split(";") if v.strip()]:
        mode, _, sets = variant.partition(":")
        steps = args.naive_steps or args.steps if mode == "naive" else args.steps
        command = [sys.executable, __file__, "--child", mode, "--label", variant, "--steps", str(steps),
                   "--warmup", str(args.warmup), "--rows", str(args.rows), "--seed", str(args.seed),
                   "--peak-tflops", str(args.peak_tflops), *(["--small"] if args.small else [])]
        for item in filter(None, sets.split(",")):
            command += ["--set", item]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        found = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not found:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            line = {"mode": mode, "label": variant, "error": f"exit {done.returncode}: {' | '.join(tail)[:600]}"}
        else:
            line = json.loads(found[-1])
        results.append(line)
        emit(line, args.out)
    naive = next((r for r in results if r.get("mode") == "naive" and "tokens_per_s" in r), None)
    best = max((r for r in results if r.get("mode") == "recipe" and "tokens_per_s" in r),
               key=lambda r: r["tokens_per_s"], default=None)
    if naive and best:
        emit({"summary": True, "naive_tokens_per_s": naive["tokens_per_s"],
              "naive_executed_flop_utilisation": naive["executed_flop_utilisation"],
              "recipe": best["label"], "recipe_tokens_per_s": best["tokens_per_s"],
              "recipe_executed_flop_utilisation": best["executed_flop_utilisation"], "recipe_mfu_6n": best["mfu_6n"],
              "speedup": round(best["tokens_per_s"] / naive["tokens_per_s"], 2),
              "recipe_peak_memory_gib": best["peak_memory_gib"], "naive_peak_memory_gib": naive["peak_memory_gib"]},
             args.out)


def emit(line: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(line, ensure_ascii=False)
    print(text, flush=True)
    if out:
        with out.open("a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
