"""The element-wise pieces of :class:`rag.llm.fastgen.generator.FastGenerator`'s decode step, and its LoRA fusion.

Each op is a plain function so that ``torch.compile`` compiles it once per process (:func:`compiled`), not once per
layer or per captured graph: residual add + RMSNorm (HF's ``*RMSNorm`` forward), the gated activation, and the
unmerged-LoRA delta as two GEMMs (prefill) or two float32 reductions (decode), or, on quantized decode, only its
first half ``x @ A^T`` (:func:`lora_low`; the quantized GEMV adds the B half in its epilogue, with the weights
:func:`pad_lora` makes). :func:`fuse_lora` turns the peft LoRA linears that share an input (q/k/v, gate/up) into one A
and one block-diagonal B for those ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's ``LlamaRMSNorm`` / ``GlmRMSNorm`` / ``Qwen2RMSNorm`` forward as a function: compiled once, not per layer."""
    h = x.float()
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def add_rms_norm(hidden: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = hidden + delta  # the residual add, fused with the next norm
    return hidden, rms_norm(hidden, weight, eps)


def lora_mm(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """bias + B(A x) for x [M, in], A [r, in], B [out, r] as two GEMMs in the adapter's dtype (prefill: M is large)."""
    return torch.addmm(bias, x.to(a.dtype) @ a.t(), b.t()).to(x.dtype)


def lora_sum(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same as two float32 reductions: compiled, they beat cuBLAS's GEMMs of width r at M = 1 (3 vs 6 us)."""
    low = (x.float()[:, None, :] * a.float()[None]).sum(-1)  # [M, r]
    return (bias.float() + (low[:, None, :] * b.float()[None]).sum(-1)).to(x.dtype)  # [M, out]


def lora_low_mm(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``x @ A^T`` in float32, ``[M, R]``, as one GEMM (the eager backend: no ``[M, R, in]`` product in memory)."""
    return x.float() @ a.float().t()


def lora_low(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The same as a float32 reduction (:func:`lora_sum`'s first line): compiled, one small kernel per group of
    linears; the quantized GEMV that follows adds ``low @ B^T`` and the bias as it stores."""
    return (x.float()[:, None, :] * a.float()[None]).sum(-1)


LORA_MIN_R = 8  # the narrowest padded rank the GEMV epilogue takes (a power of two)


def pad_lora(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A ``[R, in]``, B ``[out, R]``) from :func:`fuse_lora`'s ``A [r, in]`` and ``B [out, r]``, zero-padded to ``R``,
    the next power of two of ``r`` (at least :data:`LORA_MIN_R`): the shape the GEMV epilogue takes. Made once per
    adapter state, not per step; the padded rows of A give zeros in ``low``, the padded columns of B add nothing."""
    r = a.shape[0]
    size = max(LORA_MIN_R, 1 << (r - 1).bit_length())
    a_pad = a.new_zeros(size, a.shape[1])
    a_pad[:r] = a
    b_pad = b.new_zeros(b.shape[0], size)
    b_pad[:, :r] = b
    return a_pad, b_pad


def rope_to_cache(rope: Callable[..., Any], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor, layer: torch.Tensor, rows: torch.Tensor,
                  pos: torch.Tensor) -> torch.Tensor:
    """Rotary on q and k [B, heads, 1, D] (the model's own ``rope``), the new k and v written into the caches
    ``[layers, batch, kv_heads, len, D]`` at (``layer``, ``rows``, ``pos``); returns the rotated q. Compiled once, the
    rotary and both cache writes are one or two kernels instead of four per layer; ``layer`` is a tensor so that
    every layer shares the compiled code (shape [1]: a 0-d tensor index would be read on the host, a sync
    that a CUDA graph cannot capture)."""
    q, k = rope(q, k, cos, sin)
    k_all[layer, rows, :, pos] = k[:, :, 0]
    v_all[layer, rows, :, pos] = v[:, :, 0]
    return q


def rope_partners(rope: Callable[..., Any], rotary: Any, head_dim: int, device: torch.device) -> torch.Tensor | None:
    """The model's rotary (``rope(q, k, cos, sin)`` with ``cos, sin = rotary(x, positions)``) as a rotation of pairs of
    dimensions, ``out[d] = x[d] c[d] + x[p[d]] s[d]``: the partner ``p`` of each dimension (int32 ``[D]``; a dimension
    the rotary leaves alone is its own partner, with ``s`` 0), or None when the rotary is not of that form (then it
    runs as the model's own op). Found by rotating the unit vectors at a few positions, checked on random vectors.
    GLM's interleaved pairs (2i, 2i + 1) on half the head and Llama's halves (i, i + D/2) both are."""
    eye = torch.eye(head_dim, device=device)[None, :, None, :]  # [1, D, 1, D]: "head" j is the unit vector e_j
    mixes = torch.zeros(head_dim, head_dim, dtype=torch.bool, device=device)  # [j, d]: e_j feeds output d
    for position in (3, 1000):  # two angles: no pair's sine is zero at both
        cos, sin = rotary(eye[:, 0], torch.tensor([[position]], device=device))
        mixes |= rope(eye, eye, cos, sin)[0][0, :, 0, :] != 0
    mixes.fill_diagonal_(False)
    if bool((mixes.sum(0) > 1).any()):
        return None
    index = torch.arange(head_dim, device=device)
    partner = torch.where(mixes.any(0), mixes.float().argmax(0), index)
    if not torch.equal(partner[partner], index):
        return None
    partner = partner.to(torch.int32)
    x = torch.randn(2, 3, head_dim, device=device)
    cos, sin = rotary(x, torch.tensor([[7], [513]], device=device))
    want = rope(x[:, :, None], x[:, :, None], cos, sin)[0][:, :, 0]
    got = rotate_pairs(x, *rope_tables(rope, cos, sin, partner), partner)
    return partner if torch.allclose(got, want, rtol=1e-5, atol=1e-5) else None


def rope_tables(rope: Callable[..., Any], cos: torch.Tensor, sin: torch.Tensor,
                partner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This step's (c, s) of :func:`rope_partners`' form, float32 ``[B, D]``, from the model's ``cos, sin`` ``[B, 1, *]``
    (one position per row): the model's own rope applied to the unit vectors (in its dtype, so c and s are the very
    numbers it multiplies by). Once per step for every layer (the decode attention applies them, :mod:`attention`)."""
    batch, dim = cos.shape[0], partner.shape[0]
    eye = torch.eye(dim, device=cos.device, dtype=cos.dtype)[None, :, None, :].expand(batch, dim, 1, dim)
    m = rope(eye, eye, cos, sin)[0][:, :, 0, :].float()  # [B, j, d]
    index = torch.arange(dim, device=cos.device)
    c = m[:, index, index]
    s = torch.where(partner.long() == index, 0.0, m[:, partner.long(), index])
    return c, s


def rotate_pairs(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
    """``x [B, H, D]`` rotated as the fused rotary does: ``x[d] c[b, d] + x[p[d]] s[b, d]`` in float32, rounded back
    to x's dtype (:func:`rope_tables`)."""
    return (x.float() * c[:, None] + x[..., partners.long()].float() * s[:, None]).to(x.dtype)


def gated(act: Callable[[torch.Tensor], torch.Tensor], gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return up * act(gate)


STANDARD_NORMS = ("GlmRMSNorm", "LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")
_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One ``torch.compile`` wrapper per function per process (generators and layers share its compiled code)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def lora_active(module: Any) -> bool:
    """Whether a (peft LoRA) linear adds an adapter to its base layer's output now (a plain linear: never)."""
    if not hasattr(module, "lora_A") or module.disable_adapters:
        return False
    return bool(module.merged) or any(a in module.lora_A for a in module.active_adapters)


def fuse_lora(modules: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """For peft LoRA linears sharing one input: (A [sum r, in], scaled block-diagonal B [sum out, sum r], bias).

    None where peft must run them itself: a module that is not a plain LoRA linear, adapters disabled or merged,
    ``fan_in_fan_out``, DoRA and other variants, a biased B, or no active adapter.
    """
    if not all(isinstance(getattr(m, "base_layer", None), nn.Linear) and hasattr(m, "lora_A") for m in modules):
        return None
    pieces = []
    for m in modules:
        if m.disable_adapters or m.merged or getattr(m, "fan_in_fan_out", False):
            return None
        for name in (a for a in m.active_adapters if a in m.lora_A):
            if name in getattr(m, "lora_variant", {}) or getattr(m, "use_dora", {}).get(name) or \
                    m.lora_B[name].bias is not None:
                return None  # DoRA & co.: let peft run it
            pieces.append((m, m.lora_A[name].weight, m.lora_B[name].weight * m.scaling[name]))
    if not pieces:
        return None
    bases = [m.base_layer for m in modules]
    offsets = {id(m): sum(b.out_features for b in bases[:i]) for i, m in enumerate(modules)}
    a_cat = torch.cat([a for _, a, _ in pieces])  # peft keeps adapters in float32 by default, and so do we
    b_block = a_cat.new_zeros(sum(b.out_features for b in bases), a_cat.shape[0])
    col = 0
    for m, a, b in pieces:
        b_block[offsets[id(m)] : offsets[id(m)] + b.shape[0], col : col + a.shape[0]] = b
        col += a.shape[0]
    bias = torch.cat([b.bias.to(a_cat.dtype) if b.bias is not None else a_cat.new_zeros(b.out_features)
                      for b in bases])
    return a_cat, b_block, bias
