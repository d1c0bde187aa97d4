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

Tokens/s counts real (non-padding) tokens after ``--warmup`` steps. MFU = 6 x parameters x tokens/s / peak bf16
FLOP/s (989.4 TFLOP/s dense on an H100 SXM; ``--peak-tflops``), the convention the issue's 4.2 % baseline uses. The
recipe child also checks that packing changes nothing: the loss of its first packed batch against the same
conversations run one at a time (token-weighted), before any training step.

    python bench/train_speed.py                             # full shape, CUDA GPU, ~40 GB
    python bench/train_speed.py --small --steps 4 --warmup 1 # tiny shape on CPU in seconds (smoke test)
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
            "batch": "1 conversation, no padding", "first_losses": meter.losses[:5]}


def recipe_parts(args: argparse.Namespace, shape: dict[str, int], device: Any, dtype: Any) -> tuple[Any, ...]:
    """The recipe's own config, trainer arguments and trainer over the random model."""
    import tempfile

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
    rows = data_mix(args.rows, shape["vocab_size"], args.seed)
    meter = Meter(args.warmup, device.type == "cuda")

    class Timing(TrainerCallback):  # type: ignore[misc]
        def on_log(self, a: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs and "num_tokens" in logs:
                meter.mark(state.global_step, int(logs["num_tokens"]), float(logs["loss"]))

    trainer = make_trainer(cfg, model, tokenizer, template, targs, rows, [], [], show_progress=False)
    trainer.add_callback(Timing())
    return cfg, trainer, meter


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
    check = packing_check(trainer, device)
    trainer.train()
    rate, tokens, seconds = meter.rate()
    t = cfg.train
    return {"tokens_per_s": round(rate, 1), "tokens": tokens, "seconds": round(seconds, 2),
            "batching": t.batching, "micro_batch_size": t.micro_batch_size, "grad_accum_steps": t.grad_accum_steps,
            "gradient_checkpointing": t.gradient_checkpointing, "lora_dropout": cfg.lora.dropout,
            "attn": cfg.model.attn_implementation, "optim": trainer.args.optim,
            "tokens_per_step": round(tokens / max(1, args.steps - args.warmup)), "packing_check": check,
            "first_losses": meter.losses[:5]}


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
            "mfu": round(6 * n * fields["tokens_per_s"] / (args.peak_tflops * 1e12), 4),
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
    parser.add_argument("--variants", default="naive;recipe;recipe:lora.dropout=0.1;recipe:train.compile=true",
                        help="';'-separated runs: naive, recipe, or recipe:key=value,key=value (recipe overrides)")
    parser.add_argument("--naive-steps", type=int, default=0, help="steps for naive (default --steps)")
    parser.add_argument("--out", type=Path, help="also append the JSON lines here")
    parser.add_argument("--child", choices=["naive", "recipe"], help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
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
        emit({"summary": True, "naive_tokens_per_s": naive["tokens_per_s"], "naive_mfu": naive["mfu"],
              "recipe": best["label"], "recipe_tokens_per_s": best["tokens_per_s"], "recipe_mfu": best["mfu"],
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
