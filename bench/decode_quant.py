"""Weight-only int8 / int4 decoding in the fast decoder vs bf16, on the same random ChatGLM3-6B-shaped model.

Stages (one JSON line each, then a summary with the ratios, all in one process on one GPU):

    kernels   each quantized linear kind on the GPU vs ``x @ dequantize().T`` (the Triton int8 GEMV at decode, the
              dequantizing prefill paths, the Triton int4 GEMV): relative error, so a packing or kernel
              mistake shows up here and not as "speed"
    bf16      FastGenerator on the model's own weights: decode tokens/s (batch 1), the reference tokens and logits
    int8      quantize="int8": tokens/s, logits vs bf16 (teacher-forced on the bf16 tokens: relative L2 per step),
              greedy agreement with bf16 over --new-tokens (prefix length and share of equal positions)
    int8_lora the same with an unmerged LoRA (r 8, every linear) active: the cost of the adapter on the int8 path,
              with B in the GEMVs' epilogue (adapter_on) and through the addend path it replaced (adapter_on_addend)
    int4      quantize="int4" (group 128; output layer int8), same measures
    int4_lora the LoRA cost on the int4 path (as int8_lora); its default is the fused walk with the adapter on
              (fused_walk_ran), the general walk beside it (adapter_on_general_walk)
    int4_pairs / int4_f32 / int4_*_general_walk / int4_pairs_lora   int4 through the fp16-pair GEMV (its pairs kernel
              first; ``quant.INT4_DIRECT`` off) or the float32 one, and the general walk: the same-run baselines of
              the bf16 GEMV that reads x itself (the default)
    int4_8k   a fresh generator with release_weights=True and an 8k-token cache: memory after freeing the bf16
              weights, and peak during a decode of --new-tokens after a 4k-token prompt
    bf16_separate_qkv / profile_bf16   q, k, v as three GEMVs (the same-run baseline of fuse_qkv), and a kernel
              profile of the bf16 decode step
    *_silu_prologue   bf16 / int8 / int4 with ``gemv.SILU_EPILOGUE`` off (SiLU in down_proj's prologue, the fused
              walk before): the same-run baseline of SiLU in the gate/up GEMV's epilogue (skip all: silu_prologue)
    *_two_kernel_attention   the same with ``attention.ONE_KERNEL`` off (decode attention as a split kernel and a
              combine kernel, before): the baseline of the one-kernel attention (skip all: two_kernel_attention)
    *_rope_op   the same with ``attention.FUSED_ROPE`` off (the rotary and the cache writes as a compiled op of their
              own, before): the baseline of the rotary in the attention kernel (skip all: rope_op)
    --serve   llm.quantization end to end through HFChatModel (see serve_quantized)
    --pdl     only programmatic dependent launch off vs on (``gemv.PDL``), and for int8 the split-K GEMVs
              (``gemv.INT8_SPLIT``) off vs on, the states alternating twice in one generator per weight kind (bf16;
              int8 general and fused walk; int4 general and fused walk): decode tok/s of each, and whether the greedy
              tokens and logits equal the base state's (PDL: bit-identical, the same kernels and block shapes; split-K
              sums in another order)

The bandwidth bound is the copy bandwidth measured here over the bytes one decode step reads (weights; the KV cache
and activations are small at these lengths). Random weights make "greedy agreement" a stress test: logits of a
random model are close together, so a tiny error flips the argmax more often than on a trained model.

    python bench/decode_quant.py                # CUDA GPU, ~25 GB
    python bench/decode_quant.py --small        # tiny shape on CPU: the dequantizing path only (a smoke test)
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.decode import (
    CHATGLM3_6B,
    RESULTS,
    SMALL,
    Bench,
    build_model,
    copy_bandwidth_gb_s,
    fast_time,
    prompt_of,
    tokens_and_logits,
)
from rag.core.types import Message
from rag.llm.fastgen import attention, gemv, quant
from rag.llm.fastgen.generator import FastGenerator
from rag.llm.fastgen.quant import quantize_linear


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return round(float((a.float() - ref.float()).norm() / ref.float().norm()), 5)


@torch.no_grad()
def kernels(model: Any, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    layer = model.model.layers[0]
    out: dict[str, Any] = {}
    for name, linear in (("gate_up", layer.mlp.gate_up_proj), ("down", layer.mlp.down_proj),
                         ("q", layer.self_attn.q_proj)):
        for kind in ("int8", "int4"):
            q = quantize_linear(linear.weight, linear.bias, kind)
            ref_w = q.dequantize(torch.float32)
            for rows in (1, 8, 300):
                x = torch.randn(rows, linear.in_features, device=device, dtype=dtype)
                want = x.float() @ ref_w.t() + (linear.bias.float() if linear.bias is not None else 0)
                out[f"{name}_{q.kind}_m{rows}"] = rel(q(x), want)
    return out


def forced_logits(gen: FastGenerator, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Logits of each step when the previous tokens are ``tokens`` (prefill of prompt + prefix; teacher forcing)."""
    steps = []
    for j in range(len(tokens)):
        list(gen.generate(prompt + tokens[:j], max_new_tokens=1))
        steps.append(gen.logits[0].clone())
    return torch.stack(steps)


def serve_quantized(b: Bench, model: Any, shape: dict[str, int], args: argparse.Namespace) -> None:
    """``llm.quantization`` end to end: the random model saved as a checkpoint, then loaded by HFChatModel.load as
    bf16, int8 and int4 (first start: quantize + write the cache; second start: from the cache), each timed for
    load, peak GPU memory while loading, warm-up, decode rate and time to the first piece of a 2,000-token prompt
    through ``stream`` vs the bare decoder's prefill (same model, same process)."""
    from bench.decode import chat_tokenizer, serve_time
    from rag.core.config import LLMConfig
    from rag.llm.base import GenerationConfig
    from rag.llm.hf.model import HFChatModel

    root = Path(args.checkpoint_dir)
    folder, cache = root / "glm6b-random", root / "cache"
    tokenizer = chat_tokenizer(shape["vocab_size"])

    def save() -> dict[str, Any]:
        t = time.perf_counter()
        model.generation_config.eos_token_id = [tokenizer.eos_token_id]
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return {"save_s": round(time.perf_counter() - t, 1), "folder_gb": round(sum(
            f.stat().st_size for f in folder.iterdir()) / 1e9, 2)}

    b.run("checkpoint", save)
    rng = random.Random(3)
    short = [Message("user", "".join(chr(rng.randrange(0x4E00, 0x9FA6)) for _ in range(200)))]
    long = [Message("user", "".join(chr(rng.randrange(0x4E00, 0x9FA6)) for _ in range(1990)))]

    def one(kind: str, start: str) -> Any:
        def go() -> dict[str, Any]:
            gc.collect()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            chat = HFChatModel.load(LLMConfig(model=str(folder), quantization=kind, device="cuda", dtype="bfloat16",
                                              cache_dir=str(cache), context_window=8192, max_new_tokens=128))
            load_s = time.perf_counter() - t
            load_peak = (torch.cuda.max_memory_allocated() - before) / 2**30
            t = time.perf_counter()
            chat.warm_up()
            warm_s = time.perf_counter() - t
            try:
                rate = serve_time(chat, short, GenerationConfig(max_new_tokens=128, temperature=0.0), runs=3)
                first = serve_time(chat, long, GenerationConfig(max_new_tokens=4, temperature=0.0), runs=5)
                bare = chat._decoder.generator
                ids = chat.encode_messages(long)
                prefill = fast_time(bare, [ids], 4, runs=5)["ttft_ms"] if bare is not None else None
                return {"origin": chat.origin, "load_s": round(load_s, 1), "load_peak_gib": round(load_peak, 2),
                        "resident_gib": round((torch.cuda.memory_allocated() - before) / 2**30, 2),
                        "warm_up_s": round(warm_s, 1), "decode_tok_s": rate["decode_tok_s"],
                        "ttft_2000_tokens_ms": first["ttft_ms"], "bare_prefill_2000_tokens_ms": prefill,
                        "stream_overhead_ms": round(first["ttft_ms"] - prefill, 1) if prefill else None,
                        "prompt_tokens": len(ids), "fast_decode": chat.info().extra["fast_decode"]}
            finally:
                del chat
        return go

    for kind, start in (("", "first"), ("int4", "first"), ("int4", "cached"), ("int8", "first"), ("int8", "cached")):
        b.run(f"serve_{kind or 'bf16'}_{start}", one(kind, start), needs_s=40)
    rates = {k: RESULTS.get(f"serve_{k}_first", {}).get("decode_tok_s") for k in ("bf16", "int8", "int4")}
    b.emit("serve_summary", **{f"{k}_tok_s": v for k, v in rates.items()},
           int8_over_bf16=round(rates["int8"] / rates["bf16"], 2) if rates["int8"] and rates["bf16"] else None,
           int4_over_bf16=round(rates["int4"] / rates["bf16"], 2) if rates["int4"] and rates["bf16"] else None,
           int4_load_first_vs_cached_s=[RESULTS.get(f"serve_int4_{s}", {}).get("load_s") for s in ("first", "cached")])


def kernel_profile(gen: FastGenerator, vocab: int, steps: int = 64) -> dict[str, Any]:
    """Where a decode step's GPU time goes: kernels of ``steps`` graph replays (an 8-token prompt, so prefill is
    negligible) by total time per token, and the busy share (kernel time / wall time per token)."""
    from torch.profiler import ProfilerActivity, profile

    prompt = prompt_of(8, vocab, 5)
    list(gen.generate(prompt, max_new_tokens=40))  # capture
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        list(gen.generate(prompt, max_new_tokens=steps))
        torch.cuda.synchronize()
    wall_us = (time.perf_counter() - t0) * 1e6 / steps
    rows = []
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if total and event.key and not event.key.startswith(("cudaGraphLaunch", "Memcpy", "Memset")):
            rows.append((total / steps, event.count / steps, event.key[:90]))
    rows.sort(reverse=True)
    busy = sum(r[0] for r in rows)
    return {"steps": steps, "wall_us_per_token_profiled": round(wall_us, 1), "kernel_us_per_token": round(busy, 1),
            "kernels_per_token": round(sum(r[1] for r in rows), 1),
            "top": [{"us_per_token": round(t, 1), "calls_per_token": round(c, 2), "kernel": k} for t, c, k in rows[:14]],
            "note": "kernels inside CUDA graphs as CUPTI reports them; wall time includes the profiler's overhead"}


PDL_VARIANTS = {"bf16": {}, "int8": {"quantize": "int8"}, "int8_fused_walk": {"quantize": "int8", "fuse_gemv": True},
                "int4": {"quantize": "int4"}, "int4_fused_walk": {"quantize": "int4", "fuse_gemv": True}}
# gemv module switches per compared state: programmatic dependent launch, int8 split-K GEMVs (int8 layers only)
PDL_STATES = {"base": {"PDL": False, "INT8_SPLIT": False}, "pdl": {"PDL": True, "INT8_SPLIT": False},
              "split": {"PDL": False, "INT8_SPLIT": True}, "pdl_split": {"PDL": True, "INT8_SPLIT": True},
              # PDL without the L2 prefetch of the first weight lines before the wait
              "pdl_nopf": {"PDL": True, "INT8_SPLIT": False, "PDL_PREFETCH": 0},
              "pdl_split_nopf": {"PDL": True, "INT8_SPLIT": True, "PDL_PREFETCH": 0}}
PDL_DEFAULT_STATES = ("base", "pdl", "split", "pdl_split")


def pdl_compare(model: Any, prompt: list[int], backend: str, time_tokens: int, chosen: tuple[str, ...] = PDL_DEFAULT_STATES,
                **kw: Any) -> dict[str, Any]:
    """Decode tok/s with programmatic dependent launch (``gemv.PDL``) and, for int8, split-K GEMVs
    (``gemv.INT8_SPLIT``) off and on (the graph recaptured at each switch), the states alternating twice in one
    generator; greedy tokens and logits of 16 steps of each state vs the base state."""
    gen = FastGenerator(model, max_batch=1, max_len=4096, backend=backend, **kw)
    states = [s for s in chosen if kw.get("quantize") == "int8" or not PDL_STATES[s]["INT8_SPLIT"]] or \
        ["base", "pdl", "pdl_nopf"]  # int8 states only: the same without split-K
    rates: dict[str, list[float]] = {state: [] for state in states}
    outputs = {}
    try:
        for state in states * 2:
            for name, value in {"PDL_PREFETCH": 1024, **PDL_STATES[state]}.items():
                setattr(gemv, name, value)
            gen.reset()
            list(gen.generate(prompt, max_new_tokens=40))  # capture (and autotune, the first time)
            rates[state].append(fast_time(gen, [prompt], time_tokens, runs=3)["decode_tok_s"])
            if state not in outputs:
                outputs[state] = tokens_and_logits(gen, prompt, 16)
    finally:
        gemv.PDL, gemv.INT8_SPLIT, gemv.PDL_PREFETCH = False, True, 1024  # the defaults
        del gen
        gc.collect()
        torch.cuda.empty_cache()
    out: dict[str, Any] = {f"{state}_tok_s": rates[state] for state in states}
    medians = {state: statistics.median(rates[state]) for state in states}
    out.update({f"{state}_median": medians[state] for state in states})
    out.update({f"{state}_gain": round(medians[state] / medians[states[0]] - 1, 4) for state in states[1:]})
    for state in states[1:]:
        out[f"{state}_same_tokens"] = outputs[state][0] == outputs[states[0]][0]
        out[f"{state}_logits_max_abs_diff"] = float((outputs[state][1] - outputs[states[0]][1]).abs().max())
        out[f"{state}_logits_rel_l2"] = rel(outputs[state][1], outputs[states[0]][1])
        out[f"{state}_greedy_prefix"] = agreement(outputs[state][0], outputs[states[0]][0])["greedy_prefix"]
    return out


def agreement(tokens: list[int], reference: list[int]) -> dict[str, Any]:
    prefix = next((i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b), len(tokens))
    same = sum(a == b for a, b in zip(tokens, reference, strict=False)) / max(1, len(reference))
    return {"greedy_prefix": prefix, "greedy_equal_share": round(same, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy agreement length (and decode timing)")
    parser.add_argument("--time-tokens", type=int, default=256, help="new tokens per timed run")
    parser.add_argument("--forced-steps", type=int, default=8, help="teacher-forced logit comparisons")
    parser.add_argument("--deadline-s", type=float, default=560.0)
    parser.add_argument("--skip", default="", help="comma-separated stages to skip: bf16_separate_qkv, profile_bf16, "
                        "general_walk (int8/int4 without the fused GEMV prologues), fused_walk (with them), int4_8k, "
                        "int8, int8_lora, int4 (its fused walk too), int4_lora, kernels (the GEMVs against x @ dequantize().T), "
                        "int4_gemvs (int4 through the fp16-pair GEMV and the float32 one instead of the bf16 one, the "
                        "general walk, and the LoRA cost through the pairs; or one of int4_pairs, int4_f32, "
                        "int4_pairs_general_walk, int4_direct_general_walk, int4_pairs_lora)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--serve", action="store_true",
                        help="only llm.quantization through HFChatModel.load/stream: bf16, int8, int4, first and cached "
                             "start (writes a ~12.5 GB checkpoint and the caches under --checkpoint-dir; CUDA)")
    parser.add_argument("--checkpoint-dir", default="/tmp/decode_quant_serve")
    parser.add_argument("--pdl", action="store_true", help="only programmatic dependent launch off vs on (CUDA): "
                        "bf16, int8, int8_fused_walk, int4, int4_fused_walk (--skip takes these names too)")
    parser.add_argument("--pdl-states", default=",".join(PDL_DEFAULT_STATES),
                        help=f"with --pdl: the states compared, the first the baseline ({', '.join(PDL_STATES)})")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    shape = SMALL if args.small else CHATGLM3_6B
    dtype = torch.bfloat16 if cuda else torch.float32
    backend = "graph" if cuda else "eager"
    if args.small:
        args.prompt_tokens, args.time_tokens = 64, 32
    b = Bench(device, args.out, args.deadline_s)
    model = build_model(shape, device, dtype)
    b.sync()
    import transformers

    b.emit("env", torch=torch.__version__, transformers=transformers.__version__, dtype=str(dtype), shape=shape,
           params_b=round(sum(p.numel() for p in model.parameters()) / 1e9, 3))
    if cuda:
        RESULTS["env"]["copy_bandwidth_gb_s"] = copy_bandwidth_gb_s(device)
    prompt = prompt_of(args.prompt_tokens, shape["vocab_size"], 1)
    embed_bytes = model.get_input_embeddings().weight.nbytes
    bf16_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) - embed_bytes
    if args.serve:
        serve_quantized(b, model, shape, args)
        return
    if args.pdl:
        for label, kw in PDL_VARIANTS.items():
            if label not in skip:
                b.run(f"pdl_{label}", lambda kw=kw: pdl_compare(model, prompt, backend, args.time_tokens,
                                                             tuple(args.pdl_states.split(",")), **kw),
                      needs_s=30)
        summary: dict[str, Any] = {}
        for state in args.pdl_states.split(","):  # each weight kind's rate over bf16's in the same state (bf16: base or pdl)
            base = RESULTS.get("pdl_bf16", {}).get(f"{'pdl' if 'pdl' in state else 'base'}_median")
            for label in PDL_VARIANTS:
                value = RESULTS.get(f"pdl_{label}", {}).get(f"{state}_median")
                if base and value:
                    summary[f"{label}_{state}_over_bf16"] = round(value / base, 3)
        b.emit("pdl_summary", **summary)
        return
    if "kernels" not in skip:
        b.run("kernels", lambda: kernels(model, device, dtype))
    ref: dict[str, Any] = {}

    def measure(gen: FastGenerator, label: str) -> dict[str, Any]:
        list(gen.generate(prompt, max_new_tokens=40))  # capture the graph (and autotune the kernels)
        timing = fast_time(gen, [prompt], args.time_tokens, runs=3)
        tokens, logits = tokens_and_logits(gen, prompt, args.new_tokens)
        out: dict[str, Any] = {**timing, "weight_gb_read_per_token": round((gen.weight_bytes or bf16_bytes) / 1e9, 2)}
        if label == "bf16":
            ref["tokens"], ref["logits"] = tokens, logits
            ref["forced"] = logits[: args.forced_steps]
        else:
            forced = forced_logits(gen, prompt, ref["tokens"][: args.forced_steps])
            out["logits_rel_l2_vs_bf16"] = [rel(forced[j], ref["forced"][j]) for j in range(len(forced))]
            out["logits_rel_l2_median"] = statistics.median(out["logits_rel_l2_vs_bf16"])
            out.update(agreement(tokens, ref["tokens"]))
        bandwidth = RESULTS["env"].get("copy_bandwidth_gb_s")
        if bandwidth:
            out["bound_tok_s"] = round(bandwidth * 1e9 / (gen.weight_bytes or bf16_bytes), 1)
            out["share_of_bound"] = round(out["decode_tok_s"] / out["bound_tok_s"], 3)
        return out

    def variant(label: str, **kw: Any) -> Any:
        def go() -> dict[str, Any]:
            t = time.perf_counter()
            gen = FastGenerator(model, max_batch=1, max_len=4096, backend=backend, **kw)
            setup = round(time.perf_counter() - t, 1)
            try:
                return {**measure(gen, label), "quantize_s": setup}
            finally:
                del gen
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
        return go

    b.run("bf16", variant("bf16"))
    if "bf16_separate_qkv" not in skip:
        b.run("bf16_separate_qkv", variant("bf16_separate_qkv", fuse_qkv=False), needs_s=60)
    if cuda and "profile_bf16" not in skip:
        b.run("profile_bf16", lambda: kernel_profile(FastGenerator(model, max_batch=1, max_len=4096, backend=backend),
                                                     shape["vocab_size"]), needs_s=60)
    if "int8" not in skip:
        b.run("int8", variant("int8", quantize="int8"), needs_s=60)

    def lora_cost(kind: str) -> Any:
        def go() -> dict[str, Any]:
            import peft

            lora_model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                                    target_modules="all-linear")).eval()
            for name, param in lora_model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=0.02)
            try:
                gen = FastGenerator(lora_model, max_batch=1, max_len=4096, backend=backend, quantize=kind)
                list(gen.generate(prompt, max_new_tokens=40))
                on = fast_time(gen, [prompt], args.time_tokens, runs=3)["decode_tok_s"]  # the defaults
                fused_ran = any(gen._lora_walk.values())  # int4: the fused walk with the adapter on (default)
                gen.lora_fused_walk = False  # the general walk, B in the GEMV epilogue
                gen.reset()
                list(gen.generate(prompt, max_new_tokens=40))
                on_general = fast_time(gen, [prompt], args.time_tokens, runs=3)["decode_tok_s"]
                gen.lora_epilogue = False  # the addend path it replaced: delta [M, out] by two reductions, then GEMV
                gen.reset()
                list(gen.generate(prompt, max_new_tokens=40))
                on_addend = fast_time(gen, [prompt], args.time_tokens, runs=3)["decode_tok_s"]
                gen.lora_epilogue, gen.lora_fused_walk = True, None
                gen.reset()
                with lora_model.disable_adapter():
                    list(gen.generate(prompt, max_new_tokens=40))
                    off = fast_time(gen, [prompt], args.time_tokens, runs=2)["decode_tok_s"]
                del gen
            finally:
                lora_model.unload()
            return {"adapter_on_tok_s": on, "fused_walk_ran": fused_ran, "adapter_on_general_walk_tok_s": on_general,
                    "adapter_on_addend_tok_s": on_addend, "adapter_off_tok_s": off,
                    "lora_cost": round(1 - on / off, 3), "lora_cost_general_walk": round(1 - on_general / off, 3),
                    "lora_cost_addend": round(1 - on_addend / off, 3)}
        return go

    def switched_off(label: str, module: Any, switch: str, **kw: Any) -> Any:
        """``variant`` with the module's switch off: the same-run baseline of what the switch turned on."""
        def go() -> dict[str, Any]:
            default = getattr(module, switch)
            setattr(module, switch, False)
            try:
                return variant(label, **kw)()
            finally:
                setattr(module, switch, default)
        return go

    for base, module, switch in (("silu_prologue", gemv, "SILU_EPILOGUE"),
                                 ("two_kernel_attention", attention, "ONE_KERNEL"),
                                 ("rope_op", attention, "FUSED_ROPE")):
        for kind, kw in (("bf16", {}), ("int8", {"quantize": "int8"}), ("int4", {"quantize": "int4"})):
            label = f"{kind}_{base}"
            if label not in skip and base not in skip and kind not in skip:
                b.run(label, switched_off(label, module, switch, **kw), needs_s=60)
    if "int8_lora" not in skip:
        b.run("int8_lora", lora_cost("int8"), needs_s=60)
    if "int4" not in skip:
        b.run("int4", variant("int4", quantize="int4"), needs_s=60)
    if "int4_lora" not in skip:
        b.run("int4_lora", lora_cost("int4"), needs_s=60)
    def int4_switched(fn: Any, direct: bool, pairs: bool) -> Any:
        """``fn`` with the int4 GEMV chosen by quant.INT4_DIRECT / quant.INT4_PAIRS (restored after)."""
        def go() -> dict[str, Any]:
            default = quant.INT4_DIRECT, quant.INT4_PAIRS
            quant.INT4_DIRECT, quant.INT4_PAIRS = direct, pairs
            try:
                return fn()
            finally:
                quant.INT4_DIRECT, quant.INT4_PAIRS = default
        return go

    # int4 through each GEMV (quant.INT4_DIRECT: the bf16 kernel reading x; INT4_PAIRS: the fp16-pair kernel after
    # its pairs kernel; neither: the float32 one) and each layer walk; int4_pairs_lora: the adapter's cost through
    # the pairs (its x @ A^T made in the pairs kernel)
    for label, direct, pairs, walk in (("int4_pairs", False, True, None), ("int4_f32", False, False, None),
                                       ("int4_pairs_general_walk", False, True, False),
                                       ("int4_direct_general_walk", True, True, False)):
        if label not in skip and "int4_gemvs" not in skip:
            b.run(label, int4_switched(variant(label, quantize="int4", fuse_gemv=walk), direct, pairs), needs_s=60)
    if "int4_pairs_lora" not in skip and "int4_gemvs" not in skip:
        b.run("int4_pairs_lora", int4_switched(lora_cost("int4"), False, True), needs_s=60)
    if "general_walk" not in skip:  # the same weights through the general layer walk (no fused GEMV prologues)
        b.run("int8_general_walk", variant("int8_general_walk", quantize="int8", fuse_gemv=False), needs_s=60)
        b.run("int4_general_walk", variant("int4_general_walk", quantize="int4", fuse_gemv=False), needs_s=60)
    if "fused_walk" not in skip:  # the same weights through the fused GEMV layer walk (prologues in the GEMVs)
        b.run("int8_fused_walk", variant("int8_fused_walk", quantize="int8", fuse_gemv=True), needs_s=60)
        if "int4" not in skip:
            b.run("int4_fused_walk", variant("int4_fused_walk", quantize="int4", fuse_gemv=True), needs_s=60)

    def int4_8k() -> dict[str, Any]:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        gen = FastGenerator(model, max_batch=1, max_len=8192, backend=backend, quantize="int4", release_weights=True)
        gc.collect()
        resident = torch.cuda.memory_allocated() / 2**30 if cuda else None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        long_prompt = prompt_of(min(4096, 8192 - args.time_tokens - 8), shape["vocab_size"], 3)
        list(gen.generate(long_prompt, max_new_tokens=args.time_tokens))
        return {"resident_gib": round(resident, 2) if resident is not None else None,
                "peak_gib_decoding_4k_prompt": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                "max_len": gen.max_len, "note": "the bf16 weights were freed after quantizing; the embedding stays bf16"}

    if "int4_8k" not in skip:
        b.run("int4_8k", int4_8k, needs_s=40)

    def rate(stage: str) -> float | None:
        value = RESULTS.get(stage, {}).get("decode_tok_s")
        return float(value) if value else None

    bf16, int8, int4 = rate("bf16"), rate("int8"), rate("int4")
    baselines: dict[str, Any] = {}
    for base in ("silu_prologue", "two_kernel_attention", "rope_op"):
        before = {kind: rate(f"{kind}_{base}") for kind in ("bf16", "int8", "int4")}
        baselines[f"{base}_tok_s"] = before
        for kind in ("int8", "int4"):
            over, under = before[kind], before["bf16"]
            if over and under:
                baselines[f"{base}_{kind}_over_bf16"] = round(over / under, 3)
    b.emit("summary", bf16_tok_s=bf16, int8_tok_s=int8, int4_tok_s=int4, **baselines,
           int8_over_bf16=round(int8 / bf16, 3) if bf16 and int8 else None,
           int4_over_bf16=round(int4 / bf16, 3) if bf16 and int4 else None,
           int4_pairs_over_bf16=round(rate("int4_pairs") / bf16, 3) if bf16 and rate("int4_pairs") else None,
           int4_pairs_lora_cost=RESULTS.get("int4_pairs_lora", {}).get("lora_cost"),
           int8_lora_cost=RESULTS.get("int8_lora", {}).get("lora_cost"),
           int8_lora_cost_addend=RESULTS.get("int8_lora", {}).get("lora_cost_addend"),
           int4_lora_cost=RESULTS.get("int4_lora", {}).get("lora_cost"),
           int8_greedy_equal_share=RESULTS.get("int8", {}).get("greedy_equal_share"),
           int4_greedy_equal_share=RESULTS.get("int4", {}).get("greedy_equal_share"),
           int4_8k_peak_gib=RESULTS.get("int4_8k", {}).get("peak_gib_decoding_4k_prompt"))


if __name__ == "__main__":
    main()
