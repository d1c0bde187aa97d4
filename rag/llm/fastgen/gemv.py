"""A bf16 GEMV for the fast decoder's batch-1 step, with the layer's element-wise neighbours fused in.

At batch 1 every linear is a matrix-vector product bound by reading its weight, and the small kernels between them
(residual add + RMSNorm, the gated activation, cuBLAS's split-K reductions) cost a launch and a ramp each: on an H100
they took ~0.7 ms of a 5.2 ms step for ChatGLM3-6B (docs/BENCHMARKS.md). :func:`fused_gemv` computes, in one
kernel that reads the weight once,

    out = W @ prologue(x) (+ bias) (+ residual)

with ``prologue`` one of: nothing; RMSNorm (``norm_weight * x * rsqrt(mean(x²) + eps)``: the sum of squares is
gathered in the same loop as the dot products and applied at the end, since the scale is one number per row of
``x``); or the gated activation ``silu(x) * up`` (GLM / Llama SwiGLU). The residual add moves into the epilogue of
the linear before the norm (o_proj, down_proj), so the residual stream is written once per half-layer.

The arithmetic is float32 on bf16 inputs; the unfused modules round the normed / activated input to bf16 before the
GEMV, so results differ from them by bf16 rounding (relative ~1e-3), as any change of kernel does. On CPU (tests) and
without Triton, :func:`fused_gemv` computes the same formula with torch ops.

The quantized GEMVs (rag.llm.fastgen.quant) also take an unmerged LoRA adapter's B projection in the epilogue:
``lora = (low [M, R], b [N, R])`` (``low = x @ A^T`` in float32, computed by the caller; ``b`` the scaled B, both
zero-padded to ``R`` columns, a power of two) adds ``low[m] . b[row]`` to each output, so the adapter costs one small
kernel for ``low`` per group of linears instead of two kernels and an ``[M, N]`` addend written and read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU installs: the torch formula serves every call
    HAS_TRITON = False

# int8 weights become floats through their bits: 0x4B000080 + q is the float 2^23 + 128 + q, so one integer add and
# one float subtraction give q exactly, both at the full rate, where the int-to-float instruction runs at a quarter
# of the FP32 rate on Hopper (16 a clock per SM) and kept the int8 GEMV near 60 % of its bandwidth bound. False: the
# instruction (the benchmark's same-run baseline, bench/gemv_quant.py kind int8-i2f).
INT8_BITS = True
MAX_ROWS = 16  # rows of x the kernel is meant for (decode); longer inputs (prefill) take the torch formula


def reference(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
              up: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              residual: torch.Tensor | None = None,
              lora: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The formula of :func:`fused_gemv` with torch ops (float32 prologue, like the kernel); ``lora = (low, b)`` adds
    ``low @ b.T`` (the quantized GEMVs' LoRA epilogue)."""
    h = x.float()
    if norm_weight is not None:
        h = norm_weight.float() * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if up is not None:
        h = F.silu(h) * up.float()
    out = h @ weight.float().t()
    if bias is not None:
        out = out + bias.float()
    if lora is not None:
        out = out + lora[0].float() @ lora[1].float().t()
    if residual is not None:
        out = out + residual.float()
    return out.to(x.dtype)


def fused_gemv(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
               up: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               residual: torch.Tensor | None = None) -> torch.Tensor:
    """``weight [N, K] @ prologue(x [M, K]) (+ bias [N]) (+ residual [M, N])`` -> ``[M, N]`` in ``x``'s dtype.

    ``norm_weight`` (RMSNorm of x first) and ``up`` (``silu(x) * up`` first) exclude each other. ``x`` and ``up`` may
    be column slices of a wider tensor (the two halves of a joined gate/up output): only their columns must be
    contiguous.
    """
    if norm_weight is not None and up is not None:
        raise ValueError("fused_gemv takes norm_weight or up, not both")
    if not (HAS_TRITON and x.is_cuda and x.dim() == 2 and x.shape[0] <= MAX_ROWS):
        return reference(x, weight, norm_weight=norm_weight, eps=eps, up=up, bias=bias, residual=residual)
    if weight.stride(1) != 1 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"fused_gemv needs a row-major weight [N, K] and x [M, K]; got {tuple(weight.shape)} "
                         f"(strides {weight.stride()}) and {tuple(x.shape)}")
    return launch_gemv(x, weight, None, bias, norm_weight=norm_weight, eps=eps, up=up, residual=residual)


def addend_stride(bias: torch.Tensor | None) -> int:
    """Row stride of what the GEMV kernels add: 0 for a bias ``[out]``, the row stride of an addend ``[M, out]``
    (a column slice of a wider tensor is fine; its columns must be contiguous)."""
    if bias is None or bias.dim() == 1:
        return 0
    if bias.stride(1) != 1:
        raise ValueError("the addend's columns must be contiguous")
    return bias.stride(0)


def row_bucket(rows: int) -> int:
    """The autotuners' key for the number of rows: one row (batch-1 decode) is tuned apart from a few (a short
    prefill, batched decode), whose programs are ``rows`` times as many. Without it, the first call's row count (the
    8-token warm-up prefill) chose the block sizes for every later one-row decode: served int4 decoded 34 % slower."""
    return 1 if rows == 1 else MAX_ROWS


def fused_args(x: torch.Tensor, up: torch.Tensor | None, norm_weight: torch.Tensor | None,
               residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(x, up, norm weight, residual, prologue code) as the GEMV kernels take them: x and up with contiguous columns
    (a column slice of a wider tensor is fine), stand-ins for what is not used."""
    if norm_weight is not None and up is not None:
        raise ValueError("norm_weight or up, not both")
    x = x if x.stride(-1) == 1 else x.contiguous()
    up = x if up is None else up if up.stride(-1) == 1 else up.contiguous()
    pro = 1 if norm_weight is not None else 2 if up is not x else 0
    return (x, up, norm_weight if norm_weight is not None else x,
            residual.contiguous() if residual is not None else x, pro)


def lora_args(x: torch.Tensor, lora: tuple[torch.Tensor, torch.Tensor] | None,
              n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(low, b, R) as the GEMV kernels take a LoRA epilogue: ``low [M, R]`` and ``b [N, R]`` with rows of exactly
    ``R`` contiguous values (``b`` may be a block of rows of a taller tensor), ``R`` a power of two; (x, x, 0) for
    none."""
    if lora is None:
        return x, x, 0
    low, b = lora
    r = b.shape[1]
    if r & (r - 1) or low.shape != (x.shape[0], r) or b.shape[0] != n:
        raise ValueError(f"LoRA epilogue needs low [M, R] and b [N, R], R a power of two; got {tuple(low.shape)}, "
                         f"{tuple(b.shape)} for x {tuple(x.shape)}, N {n}")
    low = low if low.is_contiguous() else low.contiguous()
    b = b if b.stride() == (r, 1) else b.contiguous()
    return low, b, r


def launch_gemv(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None, bias: torch.Tensor | None, *,
                norm_weight: torch.Tensor | None, eps: float, up: torch.Tensor | None,
                residual: torch.Tensor | None, lora: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """:data:`gemv_kernel` on CUDA for a row-major ``weight [N, K]``: bf16, or int8 with one float32 ``scales``
    per row; ``bias`` a row ``[N]`` or an addend ``[M, N]``; ``lora`` a LoRA epilogue (:func:`lora_args`)."""
    x, up_, g, res, pro = fused_args(x, up, norm_weight, residual)
    low, lb, r = lora_args(x, lora, weight.shape[0])
    rows, (n, k) = x.shape[0], weight.shape
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), rows)  # noqa: E731
    gemv_kernel[grid](x, x.stride(0), up_, up_.stride(0), g, weight, weight.stride(0),
                      scales if scales is not None else x, bias if bias is not None else x, addend_stride(bias), res,
                      low, lb, out, n, k, float(eps), row_bucket(rows), PRO=pro, HAS_SCALE=scales is not None,
                      HAS_BIAS=bias is not None, HAS_RES=residual is not None, LORA_R=r,
                      INT8_BITS=INT8_BITS and scales is not None)
    return out


if HAS_TRITON:

    @triton.jit
    def prologue_load(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, cols, col_ok, squares, PRO: tl.constexpr):
        """prologue(x[m, cols]) in float32 and the running sum of squares: PRO 0 x; 1 RMSNorm (norm weight now,
        1 / rms at the end, :func:`epilogue_store`); 2 silu(x) * up. Shared by the bf16 and quantized GEMVs."""
        x = tl.load(x_ptr + m * x_stride + cols, mask=col_ok, other=0.0).to(tl.float32)
        if PRO == 1:
            squares += x * x
            x = x * tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        if PRO == 2:
            u = tl.load(up_ptr + m * up_stride + cols, mask=col_ok, other=0.0).to(tl.float32)
            x = x / (1.0 + tl.exp(-x)) * u
        return x, squares

    @triton.jit
    def epilogue_store(acc, squares, K, eps, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr, out_ptr, m, N, rows, row_ok,
                       PRO: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, LORA_R: tl.constexpr):
        """out[m, rows] = acc (/ rms of x, PRO 1) + bias or addend row (``b_stride`` 0: one bias row) (+ the LoRA
        term low[m] . b[rows], ``LORA_R`` > 0: low [M, LORA_R] float32, b [N, LORA_R]) + residual."""
        if PRO == 1:
            acc = acc * tl.rsqrt(tl.sum(squares, axis=0) / K + eps)
        if LORA_R > 0:
            j = tl.arange(0, LORA_R)
            lb = tl.load(lb_ptr + rows[:, None] * LORA_R + j[None, :], mask=row_ok[:, None], other=0.0)
            low = tl.load(lo_ptr + m * LORA_R + j)
            acc += tl.sum(lb.to(tl.float32) * low.to(tl.float32)[None, :], axis=1)
        if HAS_BIAS:
            acc += tl.load(b_ptr + m * b_stride + rows, mask=row_ok, other=0.0).to(tl.float32)
        if HAS_RES:
            acc += tl.load(r_ptr + m * N + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + m * N + rows, acc.to(out_ptr.dtype.element_ty), mask=row_ok)

    @triton.autotune(configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                              for n, k, w, s in ((8, 512, 4, 3), (16, 256, 4, 4), (16, 512, 4, 3), (32, 256, 4, 3),
                                                 (4, 1024, 4, 3), (8, 1024, 8, 3), (16, 512, 8, 4), (32, 128, 4, 4),
                                                 (4, 512, 2, 4), (2, 1024, 4, 4), (8, 256, 2, 4), (16, 1024, 8, 2),
                                                 # the int8 kernel's own (one byte a weight: wider K blocks)
                                                 (16, 256, 4, 3), (16, 512, 8, 3), (32, 256, 8, 3), (2, 2048, 4, 3),
                                                 (4, 512, 2, 3), (2, 1024, 2, 3))],
                     # LORA_R not in the key: the LoRA epilogue reuses the block shape tuned for the layer (its
                     # [BLOCK_N, R] tile is small; no second autotuning at the first adapter step)
                     key=["N", "K", "ROW_BUCKET", "PRO", "HAS_SCALE", "INT8_BITS"])
    @triton.jit
    def gemv_kernel(x_ptr, x_stride, up_ptr, up_stride, g_ptr, w_ptr, w_stride, s_ptr, b_ptr, b_stride, r_ptr,
                     lo_ptr, lb_ptr, out_ptr, N, K, eps, ROW_BUCKET, PRO: tl.constexpr, HAS_SCALE: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, LORA_R: tl.constexpr, INT8_BITS: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # program (block of BLOCK_N output rows, row m of x): dot products of those weight rows (bf16, or int8 with one
        # scale per row: HAS_SCALE) with prologue(x[m])
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.program_id(1)
        row_ok = rows < N
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        squares = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            x, squares = prologue_load(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, cols, col_ok, squares, PRO)
            w = tl.load(w_ptr + rows[:, None] * w_stride + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                        other=0)
            if INT8_BITS:  # see INT8_BITS
                wf = (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
            else:
                wf = w.to(tl.float32)
            acc += tl.sum(wf * x[None, :], axis=1)
        if HAS_SCALE:
            acc = acc * tl.load(s_ptr + rows, mask=row_ok, other=0.0)
        epilogue_store(acc, squares, K, eps, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr, out_ptr, m, N, rows, row_ok, PRO,
                       HAS_BIAS, HAS_RES, LORA_R)
