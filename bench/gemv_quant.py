"""Weight-only int8 / int4 GEMV bandwidth at batch 1 on ChatGLM3-6B's shapes (:mod:`rag.llm.fastgen.quant`), with
the same-run bf16 fused GEMV and cuBLAS for scale. JSON lines: one per shape and kind, with the block shape the
autotuner chose and every tried configuration's time (``configs_us``), so a slow layer can be told from a slow kernel.

    python bench/gemv_quant.py --out gemv_quant.jsonl          # CUDA GPU
    python bench/gemv_quant.py --kinds int8,int8-i2f           # int8 through its bits vs the int-to-float instruction
    python bench/gemv_quant.py --kinds bf16-pdl,int8,int8-pdl,int8-split,int8-split-pdl,int4,int4-pdl

A kind is a weight kind and switches of rag.llm.fastgen.gemv, each off unless named: ``-pdl`` programmatic dependent
launch (``gemv.PDL``; the graph replays the same GEMV on successive weight copies back to back, so the gain is that
of one GEMV following another), ``-split`` the int8 split-K GEMV (``gemv.INT8_SPLIT``), ``-i2f`` int8 through the
int-to-float instruction (``gemv.INT8_BITS`` off), ``-f32`` int4 through the float32 kernel that applies the prologue
per weight (``quant.INT4_DIRECT`` and ``quant.INT4_PAIRS`` off), ``-pairs`` through the fp16-pair GEMV after its pairs
kernel (``INT4_DIRECT`` off; both timed), ``-direct`` through the bf16 GEMV that reads x itself (``INT4_DIRECT``, the
default; the ``swiglu`` prologue takes the pairs).

Each measurement replays a CUDA graph of calls that cycle over enough copies of the weight (>= 256 MB) that none is
served from the L2 cache, as in decoding. Each shape runs with the prologue/epilogue it has in the fused decode step
(q/k/v and gate/up: RMSNorm; o: + residual; down: silu gate + residual; output layer: RMSNorm, int8 in both kinds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.gemv import timed
from rag.llm.fastgen import gemv, quant
from rag.llm.fastgen.gemv import SPLIT_MAX_N, fused_gemv, gemv_kernel, gemv_split_kernel, reference
from rag.llm.fastgen.quant import quantize_linear

# name: (out, in, prologue)
SHAPES = {"qkv": (4608, 4096, "norm"), "o": (4096, 4096, "residual"), "gate_up": (27392, 4096, "norm"),
          "down": (4096, 13696, "swiglu"), "lm_head": (65024, 4096, "norm"),
          # with gemv.SILU_EPILOGUE: SiLU of the gate half as gate/up stores it, then down's prologue is x * up
          "gate_up_silu": (27392, 4096, "norm_silu"), "down_gated": (4096, 13696, "gated")}


def form(prologue: str, n: int, k: int) -> tuple[dict[str, Any], torch.Tensor]:
    dev, dt = "cuda", torch.bfloat16
    both = torch.randn(1, 2 * k, device=dev, dtype=dt)
    if prologue == "norm":
        return {"norm_weight": torch.rand(k, device=dev, dtype=dt) + 0.5, "eps": 1e-5}, both[:, :k]
    if prologue == "norm_silu":
        return {"norm_weight": torch.rand(k, device=dev, dtype=dt) + 0.5, "eps": 1e-5, "silu_rows": n // 2}, both[:, :k]
    if prologue == "residual":
        return {"residual": torch.randn(1, n, device=dev, dtype=dt)}, both[:, :k]
    gated = {"activated": True} if prologue == "gated" else {}
    return {"up": both[:, k:], "residual": torch.randn(1, n, device=dev, dtype=dt), **gated}, both[:, :k]


def tried(kernel: Any) -> dict[str, float]:
    """The autotuner's timings of its last tuning (``configs_timings``), in µs by configuration."""
    timings = getattr(kernel, "configs_timings", None) or {}
    out = {}
    for config, t in timings.items():
        value = t[0] if isinstance(t, (list, tuple)) else t
        out[",".join(f"{k}={v}" for k, v in config.kwargs.items()) + f",w={config.num_warps},s={config.num_stages}"] = \
            round(float(value) * 1e3, 2)
    return out


def shape_rows(name: str, n: int, k: int, prologue: str, kinds: list[str]) -> list[dict[str, Any]]:
    kw, x = form(prologue, n, k)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    rows: list[dict[str, Any]] = []
    copies = max(2, -(-(256 << 20) // (n * k * 2)))
    ws = [w] + [torch.randn_like(w) * 0.02 for _ in range(copies - 1)]
    gemv.PDL = False
    t = timed(lambda: [fused_gemv(x, wi, **kw) for wi in ws]) / copies
    rows.append({"shape": name, "N": n, "K": k, "prologue": prologue, "kind": "bf16", "us": round(t * 1e6, 2),
                 "GBps": round(n * k * 2 / t / 1e9, 1)})
    if "bf16-pdl" in kinds:
        gemv.PDL = True
        t = timed(lambda: [fused_gemv(x, wi, **kw) for wi in ws]) / copies
        got, want = fused_gemv(x, w, **kw).float(), reference(x, w, **kw).float()
        rows.append({"shape": name, "N": n, "K": k, "prologue": prologue, "kind": "bf16-pdl", "us": round(t * 1e6, 2),
                     "GBps": round(n * k * 2 / t / 1e9, 1), "vs_bf16": round(rows[0]["us"] / (t * 1e6), 2),
                     "rel_err": round(float((got - want).norm() / want.norm()), 5)})
    ws = []
    for kind in kinds:
        if (name == "lm_head" and kind.startswith("int4")) or kind.startswith("bf16"):
            continue
        base, *switches = kind.split("-")
        gemv.PDL, gemv.INT8_SPLIT, gemv.INT8_BITS = "pdl" in switches, "split" in switches, "i2f" not in switches
        default_direct, default_pairs = quant.INT4_DIRECT, quant.INT4_PAIRS
        quant.INT4_DIRECT = "direct" in switches or (not {"pairs", "f32"} & set(switches) and default_direct)
        quant.INT4_PAIRS = "pairs" in switches or ("f32" not in switches and default_pairs)
        layer = quantize_linear(w, None, base)
        copies = max(2, -(-(256 << 20) // layer.nbytes))
        layers = [layer] + [quantize_linear(torch.randn_like(w) * 0.02, None, base) for _ in range(copies - 1)]
        kernel = (quant._int4_bf16_gemv_kernel if quant.INT4_DIRECT and prologue != "swiglu" else
                  quant._int4_pair_gemv_kernel if quant.INT4_PAIRS else quant._int4_gemv_kernel) \
            if layer.kind == "int4" else \
            gemv_split_kernel if gemv.INT8_SPLIT and n <= SPLIT_MAX_N else gemv_kernel
        t = timed(lambda layers=layers: [q(x, **kw) for q in layers]) / copies  # type: ignore[misc]
        got = layer(x, **kw).float()
        want = reference(x, layer.dequantize(torch.bfloat16), **kw).float()
        best = getattr(kernel, "best_config", None)
        gemv.INT8_BITS, gemv.PDL, gemv.INT8_SPLIT = True, False, False
        quant.INT4_DIRECT, quant.INT4_PAIRS = default_direct, default_pairs
        rows.append({"shape": name, "N": n, "K": k, "prologue": prologue, "kind": kind,
                     "us": round(t * 1e6, 2), "GBps": round(layer.nbytes / t / 1e9, 1),
                     "vs_bf16": round(rows[0]["us"] / (t * 1e6), 2), "rel_err": round(float((got - want).norm()
                                                                                            / want.norm()), 5),
                     "best": str(best.all_kwargs()) if best is not None else None, "configs_us": tried(kernel)})
        layers = []
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--kinds", default="int8,int4")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    src = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src))
    out = args.out.open("a") if args.out else None

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps({key: v for key, v in row.items() if key != "configs_us"}), flush=True)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()

    emit({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
          "copy_GBps": round(2 * src.numel() / t / 1e9, 1)})
    src = dst = torch.empty(0)
    for name in args.shapes.split(","):
        n, k, prologue = SHAPES[name]
        for row in shape_rows(name, n, k, prologue, args.kinds.split(",")):
            emit(row)

if __name__ == "__main__":
    main()
