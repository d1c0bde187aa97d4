"""A bf16 GEMV for the fast decoder's batch-1 step, with the layer's element-wise neighbours fused in.

At batch 1 every linear is a matrix-vector product bound by reading its weight, and the small kernels between them
(residual add + RMSNorm, the gated activation, cuBLAS's split-K reductions) cost a launch and a ramp each: on an H100
they took ~0.7 ms of a 5.2 ms step for ChatGLM3-6B (docs/BENCHMARKS.md). :func:`fused_gemv` computes, in one
kernel that reads the weight once,

    out = W @ prologue(x) (+ bias) (+ residual)

with ``prologue`` one of: nothing; RMSNorm (``norm_weight * x * rsqrt(mean(x²) + eps)``: the sum of squares is
gathered in the same loop as the dot products and applied at the end, since the scale is one number per row of
``x``); or the gated activation ``silu(x) * up`` (GLM / Llama SwiGLU) -- in the decode step the SiLU itself runs
in the gate/up GEMV's epilogue (``silu_rows``, :data:`SILU_EPILOGUE`) and down_proj's prologue is ``x * up``
(``activated``). The residual add moves into the epilogue of the linear before the norm (o_proj, down_proj), so
the residual stream is written once per half-layer.

The arithmetic is float32 on bf16 inputs; the unfused modules round the normed / activated input to bf16 before the
GEMV, so results differ from them by bf16 rounding (relative ~1e-3), as any change of kernel does. On CPU (tests) and
without Triton, :func:`fused_gemv` computes the same formula with torch ops.

The quantized GEMVs (rag.llm.fastgen.quant) also take an unmerged LoRA adapter's B projection in the epilogue:
``lora = (low [M, R], b [N, R])`` (``low = x @ A^T`` in float32, computed by the caller; ``b`` the scaled B, both
zero-padded to ``R`` columns, a power of two) adds ``low[m] . b[row]`` to each output, so the adapter costs one small
kernel for ``low`` per group of linears instead of two kernels and an ``[M, N]`` addend written and read.

Programmatic dependent launch (:data:`PDL`, Hopper and later): the decode step is a chain of ~140-270 dependent
kernels a token inside a CUDA graph, and each one used to start only once the one before had finished and flushed
its writes. The Triton decode kernels (these GEMVs, :mod:`rag.llm.fastgen.quant`'s int4 GEMV, the decode attention)
are launched with the programmatic-serialization attribute instead: a kernel may start while the previous one
finishes; it asks the L2 cache for its first weight lines (which no earlier kernel writes) and only then waits
(``griddepcontrol.wait``) for the previous kernel's writes before it reads anything a kernel wrote (x, the residual,
the LoRA ``low``, split-K counters) or writes anything itself, then lets the next kernel start launching.
"""

from __future__ import annotations

from typing import Any

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
# Programmatic dependent launch of the Triton decode kernels (see the module's docstring), where the GPU has it
# (compute capability >= 9). Read at each launch: a captured CUDA graph keeps what was on at its capture, so a
# bench switches it and calls FastGenerator.reset(). Off: on an H200 it made decoding 0.6-2.8 % slower (bf16, int8,
# int4; same run, docs/BENCHMARKS.md) though a GEMV directly after another gained up to 10 %.
PDL = False
# bytes of each weight row a kernel asks the L2 cache for before it waits for the previous kernel (PDL only; 0: none)
PDL_PREFETCH = 1024
_CAPABILITY: dict[int, int] = {}
# int8 layers of at most SPLIT_MAX_N rows (q/k/v, o, down of ChatGLM3-6B) take gemv_split_kernel, whose autotuner also
# tries split-K shapes (SPLIT programs per block of rows, each over a slice of K; the last to arrive adds the slices
# up: :func:`finish_store`); False: gemv_kernel, whose shapes have no split (the bench's same-run baseline)
INT8_SPLIT = True
# The fused layer walk applies SiLU to the gate half of the gate/up GEMV's outputs as it stores them
# (``silu_rows``), so down_proj's prologue is ``x * up`` (``activated``): one exponential per gate value a token,
# instead of one per gate value in every program of down_proj that reads it (its prologue runs per block of rows).
# Read when a decode graph is captured; False: SiLU in down_proj's prologue (the bench's same-run baseline).
SILU_EPILOGUE = True
SPLIT_MAX_N = 16384  # layers of at most this many rows may take split-K GEMV configurations
SPLIT_MAX = 8  # the most programs that share one block of rows (the autotuners' largest SPLIT)
_COUNTERS: dict[torch.device, torch.Tensor] = {}


def pdl_on(x: torch.Tensor) -> bool:
    """Whether kernels on ``x``'s device launch with programmatic dependent launch: :data:`PDL`, and CUDA compute
    capability 9 or more (``griddepcontrol`` is Hopper's)."""
    if not (PDL and HAS_TRITON and x.is_cuda):
        return False
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)[0]
    return _CAPABILITY[index] >= 9


def prologue(x: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
             up: torch.Tensor | None = None, activated: bool = False) -> torch.Tensor:
    """What the GEMVs multiply by in float32: ``x``, its RMSNorm (``norm_weight``) or ``silu(x) * up`` (``x * up``
    when ``activated``: x is SiLU's output already, see :data:`SILU_EPILOGUE`)."""
    h = x.float()
    if norm_weight is not None:
        h = norm_weight.float() * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if up is not None:
        h = (h if activated else F.silu(h)) * up.float()
    return h


def reference(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
              up: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              residual: torch.Tensor | None = None,
              lora: tuple[torch.Tensor, torch.Tensor] | None = None, activated: bool = False,
              silu_rows: int = 0) -> torch.Tensor:
    """The formula of :func:`fused_gemv` with torch ops (float32 prologue, like the kernel); ``lora = (low, b)`` adds
    ``low @ b.T`` (the quantized GEMVs' LoRA epilogue)."""
    out = prologue(x, norm_weight=norm_weight, eps=eps, up=up, activated=activated) @ weight.float().t()
    if bias is not None:
        out = out + bias.float()
    if lora is not None:
        out = out + lora[0].float() @ lora[1].float().t()
    if residual is not None:
        out = out + residual.float()
    if silu_rows:
        out = torch.cat([F.silu(out[:, :silu_rows]), out[:, silu_rows:]], dim=1)
    return out.to(x.dtype)


def fused_gemv(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
               up: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               residual: torch.Tensor | None = None, activated: bool = False, silu_rows: int = 0) -> torch.Tensor:
    """``weight [N, K] @ prologue(x [M, K]) (+ bias [N]) (+ residual [M, N])`` -> ``[M, N]`` in ``x``'s dtype.

    ``norm_weight`` (RMSNorm of x first) and ``up`` (``silu(x) * up`` first; ``x * up`` with ``activated``) exclude
    each other. ``x`` and ``up`` may be column slices of a wider tensor (the two halves of a joined gate/up output):
    only their columns must be contiguous. ``silu_rows``: SiLU of the first ``silu_rows`` outputs, applied last
    (the gate half of a joined gate/up matrix, :data:`SILU_EPILOGUE`).
    """
    if norm_weight is not None and up is not None:
        raise ValueError("fused_gemv takes norm_weight or up, not both")
    if not (HAS_TRITON and x.is_cuda and x.dim() == 2 and x.shape[0] <= MAX_ROWS):
        return reference(x, weight, norm_weight=norm_weight, eps=eps, up=up, bias=bias, residual=residual,
                         activated=activated, silu_rows=silu_rows)
    if weight.stride(1) != 1 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"fused_gemv needs a row-major weight [N, K] and x [M, K]; got {tuple(weight.shape)} "
                         f"(strides {weight.stride()}) and {tuple(x.shape)}")
    return launch_gemv(x, weight, None, bias, norm_weight=norm_weight, eps=eps, up=up, residual=residual,
                       activated=activated, silu_rows=silu_rows)


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
               residual: torch.Tensor | None,
               activated: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(x, up, norm weight, residual, prologue code) as the GEMV kernels take them: x and up with contiguous columns
    (a column slice of a wider tensor is fine), stand-ins for what is not used. Prologue codes: 0 none, 1 RMSNorm,
    2 ``silu(x) * up``, 3 ``x * up`` (``activated``)."""
    if norm_weight is not None and up is not None:
        raise ValueError("norm_weight or up, not both")
    x = x if x.stride(-1) == 1 else x.contiguous()
    up = x if up is None else up if up.stride(-1) == 1 else up.contiguous()
    pro = 1 if norm_weight is not None else (3 if activated else 2) if up is not x else 0
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


def arrival_counters(device: torch.device, needed: int = 0) -> torch.Tensor:
    """The arrival counters of the decode kernels whose last program to arrive finishes the work (the split-K GEMVs'
    :func:`finish_store`, the one-kernel decode attention): int32 zeros, each returned to zero by the program that
    used it, so kernels of one stream share them (with PDL too: every program waits for the kernel before it ahead
    of any counter). Kept per device, made at the first call, which is eager (autotuning and warm-up steps run
    before graph capture); holds ``MAX_ROWS * SPLIT_MAX_N / 4`` (a split-K block has at least 4 rows)."""
    if device not in _COUNTERS:
        _COUNTERS[device] = torch.zeros(MAX_ROWS * (SPLIT_MAX_N // 4), dtype=torch.int32, device=device)
    if needed > _COUNTERS[device].numel():
        raise ValueError(f"{needed} arrival counters asked for, {_COUNTERS[device].numel()} held")
    return _COUNTERS[device]


def split_buffers(device: torch.device, rows: int, out_features: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    """Split-K scratch for one GEMV launch: partial dot products ``[rows, SPLIT_MAX, out]`` and sums of squares
    (float32, written before they are read), and the :func:`arrival_counters`. Split-K shapes have at least 4 rows a
    block (the counters and sums of squares hold ``out / 4`` blocks a row)."""
    counters = arrival_counters(device)
    if out_features > SPLIT_MAX_N:  # no split configuration is tried: nothing to hold
        return counters, counters, counters
    ws = torch.empty(rows * SPLIT_MAX * out_features, dtype=torch.float32, device=device)
    sq = torch.empty(rows * SPLIT_MAX * (out_features // 4 + 1), dtype=torch.float32, device=device)
    return ws, sq, counters


def launch_gemv(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None, bias: torch.Tensor | None, *,
                norm_weight: torch.Tensor | None, eps: float, up: torch.Tensor | None,
                residual: torch.Tensor | None, lora: tuple[torch.Tensor, torch.Tensor] | None = None,
                activated: bool = False, silu_rows: int = 0) -> torch.Tensor:
    """:data:`gemv_kernel` on CUDA for a row-major ``weight [N, K]``: bf16, or int8 with one float32 ``scales``
    per row; ``bias`` a row ``[N]`` or an addend ``[M, N]``; ``lora`` a LoRA epilogue (:func:`lora_args`);
    ``activated`` / ``silu_rows`` as in :func:`fused_gemv`."""
    x, up_, g, res, pro = fused_args(x, up, norm_weight, residual, activated)
    low, lb, r = lora_args(x, lora, weight.shape[0])
    rows, (n, k) = x.shape[0], weight.shape
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), rows, meta["SPLIT"])  # noqa: E731
    pdl = pdl_on(x)
    split = INT8_SPLIT and scales is not None and n <= SPLIT_MAX_N
    ws, sq, cnt = split_buffers(x.device, rows, n) if split else (x, x, x)
    (gemv_split_kernel if split else gemv_kernel)[grid](
        x, x.stride(0), up_, up_.stride(0), g, weight, weight.stride(0), scales if scales is not None else x,
        bias if bias is not None else x, addend_stride(bias), res, low, lb, out, ws, sq, cnt, n, k, float(eps),
        silu_rows, row_bucket(rows), PRO=pro, HAS_SCALE=scales is not None, HAS_BIAS=bias is not None,
        HAS_RES=residual is not None, LORA_R=r, INT8_BITS=INT8_BITS and scales is not None, PDL=pdl,
        PREFETCH=PDL_PREFETCH if pdl else 0, launch_pdl=pdl)
    return out


if HAS_TRITON:

    @triton.jit
    def pdl_begin(w_ptr, w_stride, rows, row_ok, col0, K, PDL: tl.constexpr, PREFETCH: tl.constexpr):
        """The start of a decode kernel under programmatic dependent launch (``PDL``; nothing otherwise): ask the L2
        cache for the first ``PREFETCH`` bytes of the weight rows ``rows`` from column ``col0`` (``w_ptr``'s element
        type; ``K`` columns a row) -- weights no kernel writes, so their streaming overlaps the previous kernel's end
        -- then wait until the previous kernel has finished and its writes are visible, and let the next kernel begin
        launching. Every program must pass here before it reads what a kernel wrote or writes anything."""
        if PDL:
            if PREFETCH > 0:
                ELEMS: tl.constexpr = 128 // (w_ptr.dtype.element_ty.primitive_bitwidth // 8)  # a 128-byte line
                LINES: tl.constexpr = PREFETCH // 128
                cols = col0 + tl.arange(0, LINES) * ELEMS
                ok = row_ok[:, None] & (cols < K)[None, :]
                offsets = tl.where(ok, rows[:, None] * w_stride + cols[None, :], 0)
                tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [w_ptr + offsets],
                                          dtype=tl.int32, is_pure=False, pack=1)
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def prologue_load(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, cols, col_ok, squares, PRO: tl.constexpr):
        """prologue(x[m, cols]) in float32 and the running sum of squares: PRO 0 x; 1 RMSNorm (norm weight now,
        1 / rms at the end, :func:`epilogue_store`); 2 silu(x) * up; 3 x * up (x is SiLU's output already).
        Shared by the bf16 and quantized GEMVs."""
        x = tl.load(x_ptr + m * x_stride + cols, mask=col_ok, other=0.0).to(tl.float32)
        if PRO == 1:
            squares += x * x
            x = x * tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        if PRO == 2:
            u = tl.load(up_ptr + m * up_stride + cols, mask=col_ok, other=0.0).to(tl.float32)
            x = x / (1.0 + tl.exp(-x)) * u
        if PRO == 3:
            x = x * tl.load(up_ptr + m * up_stride + cols, mask=col_ok, other=0.0).to(tl.float32)
        return x, squares

    @triton.jit
    def epilogue_store(acc, squares, K, eps, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr, out_ptr, m, N, rows, row_ok,
                       silu_rows, PRO: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                       LORA_R: tl.constexpr):
        """out[m, rows] = acc (/ rms of x, PRO 1) + bias or addend row (``b_stride`` 0: one bias row) (+ the LoRA
        term low[m] . b[rows], ``LORA_R`` > 0: low [M, LORA_R] float32, b [N, LORA_R]) + residual, then SiLU of
        the rows below ``silu_rows``."""
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
        if silu_rows > 0:
            acc = tl.where(rows < silu_rows, acc / (1.0 + tl.exp(-acc)), acc)
        tl.store(out_ptr + m * N + rows, acc.to(out_ptr.dtype.element_ty), mask=row_ok)

    @triton.jit
    def finish_store(total, squares, ws_ptr, sq_ptr, cnt_ptr, s, m, K, eps, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr,
                     out_ptr, N, rows, row_ok, silu_rows, PRO: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_RES: tl.constexpr, LORA_R: tl.constexpr, SPLIT: tl.constexpr):
        """Store this program's rows (``total`` [BLOCK_N] dot products, ``squares`` [1] its part of sum(x²)). With
        split-K (``SPLIT`` programs per block of rows, each over a slice of K), each stores its partial sums to the
        workspace and counts itself in; the last to arrive adds the parts up, stores, and resets the counter for the
        next launch (or graph replay). Shared by the int8 and int4 GEMVs."""
        if SPLIT == 1:
            epilogue_store(total, squares, K, eps, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr, out_ptr, m, N, rows, row_ok,
                           silu_rows, PRO, HAS_BIAS, HAS_RES, LORA_R)
        else:
            tile = tl.program_id(0)
            tiles = tl.num_programs(0)
            tl.store(ws_ptr + (m * SPLIT + s) * N + rows, total, mask=row_ok)
            tl.store(sq_ptr + (m * SPLIT + s) * tiles + tile + tl.arange(0, 1), squares)
            tl.debug_barrier()  # every thread's stores issued before the (one-thread, releasing) count
            count = tl.atomic_add(cnt_ptr + m * tiles + tile, 1, sem="acq_rel")
            if count == SPLIT - 1:
                parts = m * SPLIT + tl.arange(0, SPLIT)
                whole = tl.sum(tl.load(ws_ptr + parts[:, None] * N + rows[None, :], mask=row_ok[None, :], other=0.0,
                                       cache_modifier=".cg"), axis=0)
                all_squares = tl.load(sq_ptr + parts * tiles + tile, cache_modifier=".cg")
                epilogue_store(whole, all_squares, K, eps, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr, out_ptr, m, N, rows,
                               row_ok, silu_rows, PRO, HAS_BIAS, HAS_RES, LORA_R)
                tl.atomic_xchg(cnt_ptr + m * tiles + tile, 0)

    def prune_split(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
        """Drop block shapes taller than the layer (small test shapes: they only repeat rows), and split-K shapes for
        layers with enough rows to fill the GPU without them."""
        n = named_args["N"]
        kept = [c for c in configs if c.kwargs["BLOCK_N"] <= max(triton.next_power_of_2(n), 4)
                and (c.kwargs["SPLIT"] == 1 or n <= SPLIT_MAX_N)]
        return kept or configs[:1]

    @triton.jit
    def _gemv(x_ptr, x_stride, up_ptr, up_stride, g_ptr, w_ptr, w_stride, s_ptr, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr,
              out_ptr, ws_ptr, sq_ptr, cnt_ptr, N, K, eps, silu_rows, ROW_BUCKET, PRO: tl.constexpr,
              HAS_SCALE: tl.constexpr,
              HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, LORA_R: tl.constexpr, INT8_BITS: tl.constexpr,
              PDL: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              SPLIT: tl.constexpr):
        # program (block of BLOCK_N output rows, row m of x, slice s of K): dot products of those weight rows (bf16, or
        # int8 with one scale per row: HAS_SCALE) with prologue(x[m]); SPLIT 1: the whole of K, else finish_store adds
        # the SPLIT slices up
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.program_id(1)
        row_ok = rows < N
        if SPLIT == 1:
            start, end = 0, K
        else:
            per = tl.cdiv(tl.cdiv(K, SPLIT), BLOCK_K) * BLOCK_K
            start = tl.program_id(2) * per
            end = tl.minimum(start + per, K)
        pdl_begin(w_ptr, w_stride, rows, row_ok, start, K, PDL, PREFETCH)  # PDL: the wait for the previous kernel
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        squares = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(start, end, BLOCK_K):
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
        if SPLIT == 1:
            epilogue_store(acc, squares, K, eps, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr, out_ptr, m, N, rows, row_ok,
                           silu_rows, PRO, HAS_BIAS, HAS_RES, LORA_R)
        else:
            finish_store(acc, tl.sum(squares, axis=0, keep_dims=True), ws_ptr, sq_ptr, cnt_ptr, tl.program_id(2), m, K,
                         eps, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr, out_ptr, N, rows, row_ok, silu_rows, PRO,
                         HAS_BIAS, HAS_RES, LORA_R, SPLIT)

    _SHAPES = ((8, 512, 4, 3), (16, 256, 4, 4), (16, 512, 4, 3), (32, 256, 4, 3), (4, 1024, 4, 3), (8, 1024, 8, 3),
               (16, 512, 8, 4), (32, 128, 4, 4), (4, 512, 2, 4), (2, 1024, 4, 4), (8, 256, 2, 4), (16, 1024, 8, 2),
               # the int8 kernel's own (one byte a weight: wider K blocks)
               (16, 256, 4, 3), (16, 512, 8, 3), (32, 256, 8, 3), (2, 2048, 4, 3), (4, 512, 2, 3), (2, 1024, 2, 3))
    # split-K shapes (int8, layers of few rows: q/k/v, o, down), at least 4 rows a block (split_buffers)
    _SPLIT_SHAPES = ((16, 512, 4, 3, 2), (16, 512, 4, 3, 4), (8, 512, 4, 3, 4), (8, 1024, 4, 3, 2),
                     (32, 256, 8, 3, 4), (16, 256, 4, 4, 4), (4, 1024, 4, 3, 4), (16, 1024, 8, 3, 2))
    # LORA_R not in the keys: the LoRA epilogue reuses the block shape tuned for the layer (its [BLOCK_N, R] tile is
    # small; no second autotuning at the first adapter step); PDL neither (the same shape with and without)
    gemv_kernel = triton.autotune(
        configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k, "SPLIT": 1}, num_warps=w, num_stages=s)
                 for n, k, w, s in _SHAPES],
        key=["N", "K", "ROW_BUCKET", "PRO", "HAS_SCALE", "INT8_BITS"])(_gemv)
    gemv_split_kernel = triton.autotune(
        configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k, "SPLIT": 1}, num_warps=w, num_stages=s)
                 for n, k, w, s in _SHAPES]
        + [triton.Config({"BLOCK_N": n, "BLOCK_K": k, "SPLIT": p}, num_warps=w, num_stages=s)
           for n, k, w, s, p in _SPLIT_SHAPES],
        key=["N", "K", "ROW_BUCKET", "PRO", "HAS_SCALE", "INT8_BITS"],
        prune_configs_by={"early_config_prune": prune_split})(_gemv)
