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
             AdamW, TRL's chunked LM head + loss that never builds the [tokens, 65024] logits, and on a GPU the
             decoder layers compiled one graph for all, ``train.compile_layers=auto``); a variant
             ``recipe:key=value,...`` overrides any key, e.g. ``recipe:lora.dropout=0.1``,
             ``recipe:train.compile_layers=false`` (the eager recipe: the baseline the speed options are checked
             against, same first losses), ``recipe:train.compile=true`` (the whole model compiled)

    recipe:stage=dpo / recipe:stage=kto   the preference stages (finetune.preference) on pairs / judged answers made
             from the same mix (rejected = another answer of similar length), reference = the base with the adapter
             disabled, micro-batch 4 pairs (8 sequences) unless overridden
    recipe:model.quantization=4bit,train.micro_batch_size=4   QLoRA: the model made on the meta device and each decoder
             layer given random weights on the GPU and quantised to bitsandbytes NF4 (double quantisation, bf16
             compute) at once, as ``from_pretrained(quantization_config=...)`` loads a checkpoint (no bf16 copy of
             the whole model), then prepared as the recipe prepares a k-bit base

Memory: ``load_peak_memory_gib`` is the peak from the start of the child until the model and its LoRA are ready
(``model_memory_gib`` is what stays allocated then); ``train_peak_memory_gib`` (= ``peak_memory_gib``) is the peak
of ``trainer.train()`` alone, the counter reset just before it. Time to the first steps: ``first_step_s`` and
``warmup_overhead_s`` (what the untimed steps cost beyond steady ones: compilation shows there).

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
conversations run one at a time (token-weighted), before any training step. The summary line compares every
variant with naive and with the plain recipe in tokens/s (same run, same GPU), and its first five losses with the
eager recipe's (``--loss-baseline``) where the batches are the same.

    python bench/train_speed.py                             # full shape, CUDA GPU, ~40 GB
    python bench/train_speed.py --small --steps 4 --warmup 1 # tiny shape on CPU in seconds (smoke test)
    python bench/train_speed.py --variants "recipe;recipe:stage=dpo;recipe:model.quantization=4bit,train.micro_batch_size=4"
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.decode import CHATGLM3_6B, build_model, glm_config  # noqa: E402  (the same random ChatGLM3-6B shape)

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
    import trl.kernels.chunked_logprob as chunked

    # TRL's chunked LM head accumulates with addmm(..., out_dtype=float32) on CUDA, which torch 2.11's counter rejects
    # ("addmm_flop() got multiple values for argument 'out_shape'"); its fallback (float32 addmm_) runs the same GEMMs
    out_dtype, chunked._MM_OUT_DTYPE = chunked._MM_OUT_DTYPE, False
    try:
        with FlopCounterMode(display=False) as counter:
            run_step()
    finally:
        chunked._MM_OUT_DTYPE = out_dtype
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


FIRST_LOSSES = 5  # the losses of the first steps, kept to compare variants' loss curves


class Meter:
    """Tokens and wall time from step ``warmup`` on (GPU work synchronised at every mark: the first untimed steps,
    ``warmup`` and the last; logs in between are the recipe's own ``train.logging_steps``), and what the untimed
    steps cost on top of steady ones: compilation (``train.compile_layers`` / ``train.compile``) happens there."""

    def __init__(self, warmup: int, cuda: bool) -> None:
        self.warmup, self.cuda = warmup, cuda
        self.begin = 0.0  # training started (before step 1)
        self.start: tuple[float, int] | None = None
        self.last: tuple[float, int] = (0.0, 0)
        self.first_step_end = 0.0
        self.losses: list[float] = []

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def train_begins(self) -> None:
        self.begin = self.now()

    def mark(self, step: int, tokens: int, loss: float) -> None:
        now = self.now()
        if step <= FIRST_LOSSES:
            self.losses.append(round(loss, 4))
        if step == 1:
            self.first_step_end = now
        if step == self.warmup:
            self.start = (now, tokens)
        self.last = (now, tokens)

    def rate(self) -> tuple[float, int, float]:
        if self.start is None:
            raise RuntimeError(f"fewer than warmup={self.warmup} steps ran")
        seconds, tokens = self.last[0] - self.start[0], self.last[1] - self.start[1]
        return tokens / max(seconds, 1e-9), tokens, seconds

    def startup(self, timed_steps: int) -> dict[str, float]:
        """``first_step_s``: training start to the end of step 1; ``warmup_overhead_s``: what the ``warmup`` untimed
        steps took beyond as many steady steps (compile time, plus allocator and autotuning warm-up, which an eager
        run shows on its own: compare the two)."""
        assert self.start is not None
        steady = (self.last[0] - self.start[0]) / max(1, timed_steps)
        return {"first_step_s": round(self.first_step_end - self.begin, 2),
                "warmup_overhead_s": round(self.start[0] - self.begin - self.warmup * steady, 2),
                "steady_step_s": round(steady, 4)}


def reset_peak_memory(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def memory_gib(cuda: bool, peak: bool = True) -> float | None:
    """Peak (since the last reset) or current GPU memory allocated by tensors, GiB; None on CPU."""
    if not cuda:
        return None
    import torch

    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / 2**30, 2)


def run_naive(args: argparse.Namespace, shape: dict[str, int], device: Any, dtype: Any) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    cuda = device.type == "cuda"
    model = build_model(shape, device, dtype, "eager")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    model.train()
    memory = {"load_peak_memory_gib": memory_gib(cuda), "model_memory_gib": memory_gib(cuda, peak=False)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    rows = data_mix(args.steps + 1, shape["vocab_size"], args.seed)
    first = (torch.tensor([rows[0]["input_ids"]], device=device), torch.tensor([rows[0]["labels"]], device=device))
    flops = counted_step_flops(lambda: model(input_ids=first[0], labels=first[1]).loss.backward())
    model.zero_grad(set_to_none=True)
    analytic = analytic_step_flops(shape, 8, TARGETS, 1, first[0].shape[1], "eager")
    meter, seen = Meter(args.warmup, cuda), 0
    reset_peak_memory(cuda)  # the training peak: the loop alone
    meter.train_begins()
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
            "batch": "1 conversation, no padding", "first_losses": meter.losses[:FIRST_LOSSES],
            "flops_per_token": round(flops / first[0].shape[1]),
            "analytic_vs_counted": round(analytic / flops, 4), **memory, "train_peak_memory_gib": memory_gib(cuda),
            **meter.startup(args.steps - args.warmup)}


def recipe_parts(args: argparse.Namespace, shape: dict[str, int], device: Any, dtype: Any) -> tuple[Any, ...]:
    """The recipe's own config, trainer arguments and trainer over the random model."""
    import tempfile

    from transformers import TrainerCallback

    from finetune.config import load_finetune_config
    from finetune.tiny import build_tokenizer
    from finetune.trainer import make_trainer, trainer_arguments
    from rag.models.templates import get_template

    overrides = [f"train.max_steps={args.steps}", "train.save_steps=0", "eval.steps=0",
                 "output.register=false", *args.set]
    if device.type == "cpu":
        overrides += ["train.device=cpu", "train.precision=fp32"]
    cfg = load_finetune_config(ROOT / "configs" / "finetune" / "chatglm3_lora_fast.yaml", overrides)
    work = Path(tempfile.mkdtemp(prefix="train_speed_"))
    template = get_template("chatglm3")
    tokenizer = build_tokenizer(work / "tok", "chatglm3", texts=["你好 hello world"] * 4, vocab_size=300)
    tokenizer.pad_token = template.eos_token
    precision = "bf16" if device.type == "cuda" else "fp32"
    targs = trainer_arguments(cfg, precision, False, work / "run")
    if cfg.model.quantization:
        from finetune.base_model import quantization_settings

        quantization_settings(cfg.model.quantization, precision, device.type == "cpu")  # refuses on CPU, in one line
        model = build_quantized_model(shape, device, dtype, cfg.model.attn_implementation, cfg.model.quantization,
                                      cfg.train.gradient_checkpointing)
    else:
        model = build_model(shape, device, dtype, cfg.model.attn_implementation)
    rows = data_mix(args.rows, shape["vocab_size"], args.seed)
    meter = Meter(args.warmup, device.type == "cuda")

    class Timing(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.train_begins()

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            # the recipe's own logging_steps stand; the meter adds logs (each a wait for the GPU) only at the first
            # untimed steps (their losses), where timing starts and at the end -- not a sync per timed step
            step = state.global_step
            if step <= min(FIRST_LOSSES, meter.warmup) or step in (meter.warmup, state.max_steps):
                control.should_log = True

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
    if args.profile:
        trainer.add_callback(profiler_callback(args.profile, args.label or "recipe", max(1, args.warmup - 2)))
    cuda = device.type == "cuda"
    memory = {"load_peak_memory_gib": memory_gib(cuda), "model_memory_gib": memory_gib(cuda, peak=False)}
    return cfg, trainer, meter, memory


def profiler_callback(folder: Path, label: str, first: int, steps: int = 2) -> Any:
    """``--profile``: ``torch.profiler`` over ``steps`` of the untimed optimizer steps (after the first, which
    compiles; the profiler's overhead stays out of the timed ones); the kernels' table
    (sorted by GPU time) goes to ``folder/<label>.txt`` -- where a step's time goes, for choosing what to fuse."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class Profile(TrainerCallback):  # type: ignore[misc]
        prof: Any = None

        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == first and self.prof is None:
                kinds = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
                self.prof = torch.profiler.profile(activities=kinds, with_stack=True)
                self.prof.start()

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.prof is not None and state.global_step == first + steps:
                if cuda:
                    torch.cuda.synchronize()
                self.prof.stop()
                folder.mkdir(parents=True, exist_ok=True)
                name = re.sub(r"[^A-Za-z0-9_-]+", "_", label)[:120]
                table = self.prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                                       row_limit=45, max_name_column_width=90)
                trace = folder / f"{name}.trace.json"
                self.prof.export_chrome_trace(str(trace))
                gaps = gpu_idle(json.loads(trace.read_text(encoding="utf-8")))
                trace.unlink()
                (folder / f"{name}.txt").write_text(f"{label}: {steps} steps\n{table}\n{gaps}\n", encoding="utf-8")
                self.prof = None

    return Profile()


def gpu_idle(trace: dict[str, Any], top: int = 70) -> str:
    """Where the GPU waits: the gaps between consecutive kernels/copies in a chrome trace, and the Python frames
    (file:line function) that were running on the CPU during them, ranked by the idle time they overlap."""
    events = trace.get("traceEvents", [])
    gpu = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events
                 if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "ts" in e)
    gaps, end = [], None
    for start, stop in gpu:
        if end is not None and start - end > 20:  # µs; shorter ones are launch spacing
            gaps.append((end, start))
        end = stop if end is None else max(end, stop)
    busy = sum(b - a for a, b in gpu)
    frames: dict[str, float] = {}
    starts, ends = [a for a, _ in gaps], [b for _, b in gaps]
    for e in events:
        if e.get("cat") != "python_function" or "dur" not in e:
            continue
        a, b = e["ts"], e["ts"] + e["dur"]
        for i in range(bisect.bisect_right(ends, a), bisect.bisect_left(starts, b)):
            frames[e["name"]] = frames.get(e["name"], 0.0) + min(b, ends[i]) - max(a, starts[i])
    lines = [f"GPU span {(gpu[-1][1] - gpu[0][0]) / 1e3:.1f} ms, kernels busy {busy / 1e3:.1f} ms, "
             f"idle gaps > 20 us: {len(gaps)} = {sum(b - a for a, b in gaps) / 1e3:.1f} ms"] if gpu else ["no GPU events"]
    lines += [f"{ms / 1e3:10.2f} ms  {name[:150]}" for name, ms in sorted(frames.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines)


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


def build_quantized_model(shape: dict[str, int], device: Any, dtype: Any, attn: str, kind: str,
                          gradient_checkpointing: bool) -> Any:
    """QLoRA's random model, loaded the way ``from_pretrained(quantization_config=...)`` loads a checkpoint: the model
    is made on the meta device, then each decoder layer in turn gets random bf16 weights on the GPU and has its
    linear layers quantised at once, so no bf16 copy of the whole model ever exists (the load peak is the k-bit model
    plus one bf16 layer, not the 12.5 GB a bf16 model would take first). Then peft's
    ``prepare_model_for_kbit_training``, as the recipe does (finetune.base_model)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import GlmForCausalLM
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    config = glm_config(shape, attn)
    with torch.device("meta"):
        model = GlmForCausalLM(config).to(dtype)
    layers, model.model.layers = model.model.layers, torch.nn.ModuleList()
    torch.manual_seed(0)
    model.to_empty(device=device)  # embeddings, final norm, output layer
    random_weights(model)
    with torch.device(device):
        model.model.rotary_emb = GlmRotaryEmbedding(config)  # computed buffers, not weights: rebuilt where they live
    for layer in layers:
        layer.to_empty(device=device)
        random_weights(layer)
        quantize_linears(layer, kind, dtype)
    model.model.layers = layers
    torch.cuda.empty_cache()
    # the flags peft and TRL read; not is_quantized, which makes the Trainer look for from_pretrained's hf_quantizer
    model.is_loaded_in_4bit, model.is_loaded_in_8bit = kind == "4bit", kind == "8bit"
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def random_weights(module: Any) -> None:
    """The initialisation transformers gives GLM (normal 0.02 matrices, zero biases, unit norm scales)."""
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)


def quantize_linears(block: Any, kind: str, compute_dtype: Any) -> None:
    """Every linear layer of ``block`` becomes a bitsandbytes 4-bit (NF4, double quantisation) or 8-bit layer holding
    the same weights (quantised as it moves to the GPU), as ``from_pretrained(quantization_config=...)`` loads them."""
    import bitsandbytes as bnb
    import torch

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
    from finetune.regional_compile import eager
    from finetune.trainer import compiles_layers

    cfg, trainer, meter, memory = recipe_parts(args, shape, device, dtype)
    with eager():  # one-off passes: compiled layers would compile them too (no-grad graphs, per-conversation lengths)
        check = packing_check(trainer, device) if cfg.stage == "sft" else None
    try:
        with eager():
            flops, real, (rows, length) = trainer_step_flops(trainer)
    except Exception as exc:  # a torch whose FLOP counter cannot run this step: the analytic count stands in (SFT)
        extra: dict[str, Any] = {"flops_per_token": None, "flop_count_error": f"{type(exc).__name__}: {exc}"[:200]}
        flops = 0.0
        if cfg.stage == "sft" and not cfg.model.quantization:
            batch = next(iter(trainer.get_train_dataloader()))
            rows, length = (int(x) for x in batch["input_ids"].shape)
            analytic = analytic_step_flops(shape, cfg.lora.r, cfg.lora.target_modules, rows, length,
                                           cfg.model.attn_implementation)
            real = int(batch["num_real_tokens"] if "num_real_tokens" in batch else batch["attention_mask"].sum())
            extra.update(flops_per_token=round(analytic / real), flops_source="analytic")
    else:
        extra = {"flops_per_token": round(flops / real), "flops_source": "FlopCounterMode",
                 "flop_batch": {"rows": rows, "length": length, "real_tokens": real}}
    if flops and cfg.stage == "sft" and not cfg.model.quantization:
        analytic = analytic_step_flops(shape, cfg.lora.r, cfg.lora.target_modules, rows, length,
                                       cfg.model.attn_implementation)
        extra["analytic_vs_counted"] = round(analytic / flops, 4)
    cuda = device.type == "cuda"
    reset_peak_memory(cuda)  # the training peak: trainer.train() alone (optimizer state and compilation included)
    trainer.train()
    rate, tokens, seconds = meter.rate()
    t = cfg.train
    return {"tokens_per_s": round(rate, 1), "tokens": tokens, "seconds": round(seconds, 2),
            "batching": t.batching, "micro_batch_size": t.micro_batch_size, "grad_accum_steps": t.grad_accum_steps,
            "gradient_checkpointing": t.gradient_checkpointing, "lora_dropout": cfg.lora.dropout,
            "compile": "model" if t.compile else "layers" if compiles_layers(cfg) else "none",
            **meter.startup(args.steps - args.warmup), **memory, "train_peak_memory_gib": memory_gib(cuda),
            "attn": cfg.model.attn_implementation, "optim": trainer.args.optim,
            "tokens_per_step": round(tokens / max(1, args.steps - args.warmup)), "packing_check": check,
            "stage": cfg.stage, "quantization": cfg.model.quantization, "first_losses": meter.losses[:FIRST_LOSSES], **extra}


def meta_counts(args: argparse.Namespace) -> None:
    """``--count-meta``: FLOPs per real token of one training step of naive, recipe and DPO on the full shape,
    counted by FlopCounterMode on meta tensors (shapes only: no GPU, no memory, seconds on a CPU). Naive: the mean
    over the first 16 conversations, one per step, eager attention; recipe: its first packed micro-batch of 12 rows
    (finetune.packing, as make_trainer packs), SDPA; DPO: 4 pairs padded together, the reference forward (adapter
    disabled) plus the policy forward and backward on the 8 sequences."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GlmForCausalLM

    from finetune.packing import PackedCollator, pack_rows

    shape = SMALL if args.small else CHATGLM3_6B
    n = params_of(shape)

    def model_for(attn: str) -> Any:
        with torch.device("meta"):
            base = GlmForCausalLM(glm_config(shape, attn)).to(torch.bfloat16)
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
    reset_peak_memory(device.type == "cuda")  # the load peak counts from here
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
            "peak_memory_gib": fields["train_peak_memory_gib"],  # training; the load peak is load_peak_memory_gib
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
    parser.add_argument("--variants", default="naive;recipe;recipe:train.compile_layers=false;recipe:train.compile=true;"
                        "recipe:model.quantization=4bit,train.micro_batch_size=4;"
                        "recipe:stage=dpo,train.batching=padded,train.micro_batch_size=4;"
                        "recipe:stage=kto,train.batching=padded,train.micro_batch_size=8",
                        help="';'-separated runs: naive, recipe, or recipe:key=value,key=value (recipe overrides)")
    parser.add_argument("--naive-steps", type=int, default=0, help="steps for naive (default --steps)")
    parser.add_argument("--loss-baseline", default="recipe:train.compile_layers=false",
                        help="the variant whose first losses the others' are compared with (same batches only)")
    parser.add_argument("--out", type=Path, help="also append the JSON lines here")
    parser.add_argument("--profile", type=Path, help="write a torch.profiler kernel table per recipe variant here")
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
                   "--peak-tflops", str(args.peak_tflops), *(["--small"] if args.small else []),
                   *(["--profile", str(args.profile)] if args.profile else [])]
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
    summary = summarize(results, args.loss_baseline)
    if summary:
        emit(summary, args.out)


def summarize(results: list[dict[str, Any]], loss_baseline: str) -> dict[str, Any] | None:
    """The run's comparison line: the best recipe variant against naive, and for every variant its tokens/s as a
    multiple of naive's and of the first plain ``recipe`` line's (all measured in this run, on this GPU), its
    utilisation and memory, and how far its first losses are from ``loss_baseline``'s (the eager recipe by default:
    a speed option must not change the loss; compared only where the batches are the same, i.e. the same stage,
    batching, micro-batch and quantisation)."""
    measured = [r for r in results if "tokens_per_s" in r]
    naive = next((r for r in measured if r["mode"] == "naive"), None)
    recipes = [r for r in measured if r["mode"] == "recipe"]
    if not naive or not recipes:
        return None
    best = max(recipes, key=lambda r: r["tokens_per_s"])
    plain = next((r for r in recipes if r["label"] == "recipe"), recipes[0])
    baseline = next((r for r in recipes if r["label"] == loss_baseline), None)
    same_batches = ("stage", "batching", "micro_batch_size", "quantization")
    table = {}
    for r in measured:
        row = {"tokens_per_s": r["tokens_per_s"], "vs_naive": round(r["tokens_per_s"] / naive["tokens_per_s"], 2),
               "vs_recipe": round(r["tokens_per_s"] / plain["tokens_per_s"], 3),
               "executed_flop_utilisation": r.get("executed_flop_utilisation"),
               "train_peak_memory_gib": r.get("train_peak_memory_gib"),
               "load_peak_memory_gib": r.get("load_peak_memory_gib"), "warmup_overhead_s": r.get("warmup_overhead_s")}
        if baseline and r is not baseline and all(r.get(k) == baseline.get(k) for k in same_batches):
            pairs = list(zip(r["first_losses"], baseline["first_losses"], strict=False))
            row["first_losses_max_rel_diff_vs_baseline"] = round(max(abs(a - b) / abs(b) for a, b in pairs), 5)
        table[r["label"]] = row
    return {"summary": True, "naive_tokens_per_s": naive["tokens_per_s"],
            "naive_executed_flop_utilisation": naive["executed_flop_utilisation"],
            "recipe": best["label"], "recipe_tokens_per_s": best["tokens_per_s"],
            "recipe_executed_flop_utilisation": best["executed_flop_utilisation"], "recipe_mfu_6n": best["mfu_6n"],
            "speedup": round(best["tokens_per_s"] / naive["tokens_per_s"], 2),
            "recipe_peak_memory_gib": best["peak_memory_gib"], "naive_peak_memory_gib": naive["peak_memory_gib"],
            "loss_baseline": baseline["label"] if baseline else None, "variants": table}


def emit(line: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(line, ensure_ascii=False)
    print(text, flush=True)
    if out:
        with out.open("a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
