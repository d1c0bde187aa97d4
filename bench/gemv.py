"""bf16 GEMV bandwidth at batch 1 on ChatGLM3-6B's shapes: cuBLAS (``F.linear``) against the fast decoder's Triton
GEMV (:mod:`rag.llm.fastgen.gemv`), plain and with its fused prologues/epilogue. JSON lines.

    python bench/gemv.py          # CUDA GPU

Each measurement replays a CUDA graph of calls that cycle over enough copies of the weight (>= 256 MB) that none
is served from the L2 cache, as in decoding, where every layer's weights are read once per token.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
import torch.nn.functional as F

from rag.llm.fastgen.gemv import fused_gemv, reference

SHAPES = {"qkv": (4608, 4096), "o": (4096, 4096), "gate_up": (27392, 4096), "down": (4096, 13696),
          "lm_head": (65024, 4096)}


def timed(fn: Callable[[], object], reps: int = 20) -> float:
    """Seconds per replay of a CUDA graph of ``fn``."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # autotune, allocate
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def shape_row(name: str, n: int, k: int) -> dict[str, object]:
    dev = "cuda"
    copies = max(2, -(-(256 << 20) // (n * k * 2)))
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    up = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    g = torch.rand(k, device=dev, dtype=torch.bfloat16) + 0.5
    res = torch.randn(1, n, device=dev, dtype=torch.bfloat16)
    bias = torch.randn(n, device=dev, dtype=torch.bfloat16)
    forms: dict[str, dict[str, object]] = {"plain": {}, "norm_bias_residual": {"norm_weight": g, "eps": 1e-5,
                                                                               "bias": bias, "residual": res},
                                           "swiglu": {"up": up}}
    row: dict[str, object] = {"shape": name, "N": n, "K": k, "weight_copies": copies}
    per_call = n * k * 2
    t = timed(lambda: [F.linear(x, w) for w in ws]) / copies
    row["cublas_us"], row["cublas_GBps"] = round(t * 1e6, 2), round(per_call / t / 1e9, 1)
    for form, kw in forms.items():
        t = timed(lambda kw=kw: [fused_gemv(x, w, **kw) for w in ws]) / copies  # type: ignore[misc]
        got, ref = fused_gemv(x, ws[0], **kw).float(), reference(x, ws[0], **kw).float()  # type: ignore[arg-type]
        row[f"triton_{form}_us"] = round(t * 1e6, 2)
        row[f"triton_{form}_GBps"] = round(per_call / t / 1e9, 1)
        row[f"triton_{form}_rel_err"] = float((got - ref).norm() / ref.norm())
    return row


def main() -> None:
    torch.manual_seed(0)
    src = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src))
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "copy_GBps": round(2 * src.numel() / t / 1e9, 1)}), flush=True)
    for name, (n, k) in SHAPES.items():
        print(json.dumps(shape_row(name, n, k)), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
