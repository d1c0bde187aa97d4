"""Weight-only int8 / int4 linears for :class:`rag.llm.fastgen.generator.FastGenerator` (``quantize="int8"|"int4"``).

Batch-1 decoding reads every weight once per token, so fewer bytes per weight is more tokens per second:

- **int8**: symmetric, one float32 scale per output row (``w ≈ q * scale``, ``q`` in [-127, 127]). Decode (a few rows
  of ``x``) runs a Triton GEMV that reads the int8 weights once and scales the dot products; prefill dequantizes one
  layer at a time and runs a normal GEMM (it is compute bound, the dequantized copy is transient).
- **int4**: asymmetric per group of ``group`` input columns (``w ≈ (q - 8) * scale + zero``, ``q`` in [0, 15]), two
  values a byte (``[out, in / 2]``, high nibble first), scales and zeros as ``[in / group, out, 2]``. Decode runs a
  Triton GEMV that unpacks the nibbles in registers and applies each group's scale to its partial dot product (and
  its zero to the group's sum of ``x``); prefill dequantizes one layer with a Triton kernel and runs a normal GEMM.
  The same layout on every device and in the cache file: no private PyTorch kernel (tinygemm's packing, used before,
  changed format between PyTorch versions and was slow for prefill: 0.78 s for a 2,000-token prompt on an H100).

On CPU (tests, the ``eager`` backend) both kinds compute ``x @ dequantize().T``: the same numbers the GPU kernels
approximate, so a CPU test checks the quantization itself and the GPU bench checks the kernels against it.
Unmerged LoRA adapters stay in bf16 and are added to the quantized base's output, so they can be switched per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rag.llm.fastgen.gemv import MAX_ROWS, addend_stride, fused_args, reference, row_bucket

try:
    import triton
    import triton.language as tl

    from rag.llm.fastgen.gemv import epilogue_store, launch_gemv, prologue_load

    HAS_TRITON = True
except ImportError:  # CPU installs: the dequantizing path serves every call
    HAS_TRITON = False

KINDS = ("int8", "int4")
INT4_GROUP = 128  # input columns per int4 scale/zero
GEMV_MAX_ROWS = MAX_ROWS  # decode batches up to this many rows take the GEMV kernels; longer inputs dequantize


@dataclass
class QuantLinear:
    """One linear layer's weight, quantized: ``__call__(x [M, in]) -> [M, out]`` in ``x``'s dtype (+ bias)."""

    kind: str
    in_features: int
    out_features: int
    qweight: torch.Tensor  # int8 [out, in] | int4: uint8 [out, in / 2], two values 0..15 a byte (high nibble first)
    scales: torch.Tensor  # int8: float32 [out] | int4: [in / group, out, 2] (scale, zero) in the compute dtype
    bias: torch.Tensor | None
    group: int = 0

    @property
    def nbytes(self) -> int:
        extra = self.bias.nbytes if self.bias is not None else 0
        return self.qweight.nbytes + self.scales.nbytes + extra

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight these numbers stand for, ``[out, in]`` (float32 unless ``dtype``)."""
        if self.kind == "int8":
            weight = self.qweight.float() * self.scales[:, None].float()
        else:
            groups = unpack_pairs(self.qweight).float().view(self.out_features, -1, self.group)  # [out, in / group, group]
            scale, zero = self.scales.float().permute(1, 0, 2).unbind(-1)  # each [out, in / group]
            weight = ((groups - 8) * scale[..., None] + zero[..., None]).view(self.out_features, self.in_features)
        return weight if dtype is None else weight.to(dtype)

    def __call__(self, x: torch.Tensor, with_bias: bool = True, add: torch.Tensor | None = None, *,
                 norm_weight: torch.Tensor | None = None, eps: float = 1e-6, up: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ w.T`` plus the bias (``with_bias``) or plus ``add`` ``[M, out]`` instead (a LoRA delta that already
        holds the bias): on CUDA the GEMV kernels add it as they store, one kernel fewer per linear.

        ``norm_weight`` / ``up`` / ``residual`` are the fused decode step's prologues and epilogue, as in
        :func:`rag.llm.fastgen.gemv.fused_gemv`: RMSNorm of ``x`` first, or ``silu(x) * up`` first; ``residual``
        ``[M, out]`` added at the end."""
        bias = add if add is not None else self.bias if with_bias else None
        fused = norm_weight is not None or up is not None or residual is not None
        if norm_weight is not None and up is not None:
            raise ValueError("a quantized linear takes norm_weight or up, not both")
        if x.device.type == "cuda" and HAS_TRITON:
            if x.shape[0] <= GEMV_MAX_ROWS:
                if self.kind == "int8":
                    return int8_gemv(x, self.qweight, self.scales, bias, norm_weight=norm_weight, eps=eps, up=up,
                                     residual=residual)
                return int4_gemv(x, self.qweight, self.scales, self.group, bias, norm_weight=norm_weight, eps=eps,
                                 up=up, residual=residual)
            if self.kind == "int4" and not fused:
                return linear_plus(x, int4_dequantize(self.qweight, self.scales, self.group, x.dtype), bias)
        if fused:
            weight = self.dequantize(x.dtype) if x.device.type != "cuda" or self.kind == "int8" else \
                int4_dequantize(self.qweight, self.scales, self.group, x.dtype)
            return reference(x, weight, norm_weight=norm_weight, eps=eps, up=up, bias=bias, residual=residual)
        return linear_plus(x, self.dequantize(x.dtype), bias)


def linear_plus(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias``, the bias a row ``[out]`` or one per input row ``[M, out]``."""
    if bias is None or bias.dim() == 1:
        return F.linear(x, weight, bias)
    return torch.addmm(bias, x, weight.t())


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[out, in]`` -> (int8 ``[out, in]``, float32 scale ``[out]``), symmetric per row."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
    q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[out, in]`` -> (uint8 ``[out, in]`` values 0..15, (scale, zero) ``[in / group, out, 2]`` float32)."""
    out_features, in_features = weight.shape
    w = weight.float().view(out_features, in_features // group, group)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / 15).clamp_min(1e-12)
    q = ((w - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.uint8)
    zero = low + 8 * scale  # so that (q - 8) * scale + zero == low + q * scale
    return q.view(out_features, in_features), torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()


def int4_group_for(in_features: int, out_features: int, group: int = INT4_GROUP) -> int:
    """The group size to use for this shape (0 when int4 cannot hold it: int8 is used for that layer instead)."""
    for size in (group, 64, 32):
        if size <= group and in_features % size == 0:
            return size
    return 0


def quantize_linear(weight: torch.Tensor, bias: torch.Tensor | None, kind: str, group: int = INT4_GROUP) -> QuantLinear:
    """Quantize one ``nn.Linear``'s weight (``[out, in]``). int4 falls back to int8 for widths no group size divides."""
    if kind not in KINDS:
        raise ValueError(f"quantize={kind!r} is not one of {', '.join(KINDS)}")
    out_features, in_features = weight.shape
    bias = None if bias is None else bias.detach()
    size = int4_group_for(in_features, out_features, group) if kind == "int4" else 0
    if kind == "int8" or not size:
        q, scale = quantize_int8(weight.detach())
        return QuantLinear("int8", in_features, out_features, q, scale, bias)
    q, scales_zeros = quantize_int4(weight.detach(), size)
    return QuantLinear("int4", in_features, out_features, nibble_pairs(q), scales_zeros.to(weight.dtype), bias,
                       group=size)


def concat_quant(parts: list[QuantLinear]) -> QuantLinear:
    """Layers of one kind and group that read the same input, as one layer whose outputs are theirs side by side
    (each output row keeps its own numbers)."""
    first = parts[0]
    bias = None if any(p.bias is None for p in parts) else torch.cat([p.bias for p in parts])  # type: ignore[misc]
    out_features = sum(p.out_features for p in parts)
    if first.kind == "int8":
        return QuantLinear("int8", first.in_features, out_features, torch.cat([p.qweight for p in parts]),
                           torch.cat([p.scales for p in parts]), bias)
    return QuantLinear("int4", first.in_features, out_features, torch.cat([p.qweight for p in parts]),
                       torch.cat([p.scales for p in parts], dim=1), bias, group=first.group)


def nibble_pairs(q: torch.Tensor) -> torch.Tensor:
    """uint8 ``[out, in]`` values 0..15 -> uint8 ``[out, in / 2]``, two values a byte, high nibble first."""
    return (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)


def unpack_pairs(pairs: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`nibble_pairs`: uint8 ``[out, in / 2]`` -> values 0..15 ``[out, in]``."""
    return torch.stack([pairs >> 4, pairs & 15], dim=-1).view(pairs.shape[0], -1)


LM_HEAD = "lm_head"  # the output layer's name in :func:`served_linears`; always int8 (int4 costs it too much)


def served_linears(lm: Any) -> dict[str, Any]:
    """``{name: nn.Linear}`` of every linear the fast decoder serves quantized: the decoder layers' linears (a LoRA
    wrapper seen through to its base layer; names as in the plain model's ``state_dict`` without ``.weight``) and the
    output layer (:data:`LM_HEAD`) unless it is tied to the input embeddings."""
    def base(module: Any) -> Any:
        return getattr(module, "base_layer", module)

    out = {f"model.layers.{i}.{name}": base(module) for i, layer in enumerate(lm.model.layers)
           for name, module in layer.named_modules() if isinstance(base(module), torch.nn.Linear)
           and "lora_" not in name and not name.endswith("base_layer")}
    head = lm.get_output_embeddings()
    if head.weight is not lm.model.embed_tokens.weight:  # a tied output layer stays as it is (same Parameter)
        out[LM_HEAD] = head
    return out


def quantize_served(lm: Any, kind: str, *, release: bool, device: torch.device | str | None = None,
                    group: int = INT4_GROUP) -> dict[str, QuantLinear]:
    """``{name: QuantLinear}`` for :func:`served_linears` of ``lm`` (the output layer int8), made on ``device`` (default:
    where each weight is). A model loaded on the CPU is quantized one layer at a time on the GPU this way, so the GPU
    never holds the bf16 weights; with ``release`` each bf16 weight is freed (left as an empty tensor on ``device``)."""
    if kind not in KINDS:
        raise ValueError(f"quantize={kind!r} is not one of {', '.join(KINDS)}")
    out: dict[str, QuantLinear] = {}
    for name, module in served_linears(lm).items():
        target = torch.device(device) if device is not None else module.weight.device
        bias = module.bias.detach().to(target) if module.bias is not None else None
        out[name] = quantize_linear(module.weight.detach().to(target), bias, "int8" if name == LM_HEAD else kind,
                                    group)
        if release:
            module.weight.data = torch.empty(0, dtype=module.weight.dtype, device=target)
            if module.bias is not None:
                module.bias.data = bias  # type: ignore[assignment]
    if release and torch.device(device or "cpu").type == "cuda":
        torch.cuda.empty_cache()
    return out


def int8_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, *,
              norm_weight: torch.Tensor | None = None, eps: float = 1e-6, up: torch.Tensor | None = None,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, in] @ (qweight * scales).T + bias`` on CUDA, reading the int8 weights (not a dequantized copy); with
    the prologues / residual epilogue of :func:`rag.llm.fastgen.gemv.fused_gemv`."""
    if not HAS_TRITON:
        return reference(x, (qweight.float() * scales[:, None]).to(x.dtype), norm_weight=norm_weight, eps=eps, up=up,
                         bias=bias, residual=residual)
    return launch_gemv(x, qweight, scales, bias, norm_weight=norm_weight, eps=eps, up=up, residual=residual)


if HAS_TRITON:

    @triton.autotune(configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
                              for n, k, w in ((8, 512, 4), (16, 256, 4), (16, 512, 4), (32, 256, 4), (32, 256, 8),
                                              (64, 128, 4), (16, 1024, 8), (32, 512, 8), (4, 512, 2), (4, 1024, 4),
                                              (2, 1024, 2), (2, 2048, 4))],
                     key=["N", "K", "ROW_BUCKET", "GROUP", "PRO"])
    @triton.jit
    def _int4_gemv_kernel(x_ptr, x_stride, up_ptr, up_stride, g_ptr, w_ptr, s_ptr, b_ptr, b_stride, r_ptr, out_ptr,
                          N, K, eps, ROW_BUCKET, GROUP: tl.constexpr, PRO: tl.constexpr, HAS_BIAS: tl.constexpr,
                          HAS_RES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # program (block of BLOCK_N output rows, row m of x). Per K block: the bytes [BLOCK_N, BLOCK_K / 2] hold the
        # even (high nibble) and odd (low nibble) columns; each group's dot product of (q - 8) with x is scaled by
        # the group's scale, and the group's zero multiplies the group's sum of x. x is prologue(x) first (PRO 1:
        # RMSNorm, its 1 / rms applied at the end, as both terms are linear in x; PRO 2: silu(x) * up).
        HALF: tl.constexpr = BLOCK_K // 2
        G: tl.constexpr = BLOCK_K // GROUP
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.program_id(1)
        row_ok = rows < N
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        squares = tl.zeros([HALF], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            pairs = k0 // 2 + tl.arange(0, HALF)
            pair_ok = pairs < K // 2
            w = tl.load(w_ptr + rows[:, None] * (K // 2) + pairs[None, :], mask=row_ok[:, None] & pair_ok[None, :],
                        other=0x88)  # (8, 8): zero after the -8
            hi = (w >> 4).to(tl.float32) - 8.0
            lo = (w & 15).to(tl.float32) - 8.0
            xe, squares = prologue_load(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, 2 * pairs, pair_ok, squares,
                                        PRO)
            xo, squares = prologue_load(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, 2 * pairs + 1, pair_ok,
                                        squares, PRO)
            dots = tl.sum(tl.reshape(hi * xe[None, :] + lo * xo[None, :], [BLOCK_N, G, GROUP // 2]), axis=2)
            xsum = tl.sum(tl.reshape(xe + xo, [G, GROUP // 2]), axis=1)
            groups = k0 // GROUP + tl.arange(0, G)
            at = (groups[None, :] * N + rows[:, None]) * 2
            ok = row_ok[:, None] & (groups[None, :] < K // GROUP)
            scale = tl.load(s_ptr + at, mask=ok, other=0.0).to(tl.float32)
            zero = tl.load(s_ptr + at + 1, mask=ok, other=0.0).to(tl.float32)
            acc += tl.sum(scale * dots + zero * xsum[None, :], axis=1)
        epilogue_store(acc, squares, K, eps, b_ptr, b_stride, r_ptr, out_ptr, m, N, rows, row_ok, PRO, HAS_BIAS,
                       HAS_RES)

    @triton.jit
    def _int4_dequantize_kernel(w_ptr, s_ptr, out_ptr, N, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                                BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        pairs = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
        ok = (rows < N)[:, None] & (pairs < K // 2)[None, :]
        w = tl.load(w_ptr + rows[:, None] * (K // 2) + pairs[None, :], mask=ok, other=0)
        at = ((2 * pairs[None, :]) // GROUP * N + rows[:, None]) * 2
        scale = tl.load(s_ptr + at, mask=ok, other=0.0).to(tl.float32)
        zero = tl.load(s_ptr + at + 1, mask=ok, other=0.0).to(tl.float32)
        hi = ((w >> 4).to(tl.float32) - 8.0) * scale + zero
        lo = ((w & 15).to(tl.float32) - 8.0) * scale + zero
        values = tl.interleave(hi, lo).to(out_ptr.dtype.element_ty)  # [BLOCK_N, BLOCK_K]: even, odd, even, ...
        cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        tl.store(out_ptr + rows[:, None] * K + cols[None, :], values,
                 mask=(rows < N)[:, None] & (cols < K)[None, :])


def int4_gemv(x: torch.Tensor, pairs: torch.Tensor, scales: torch.Tensor, group: int,
              bias: torch.Tensor | None, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
              up: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, in] @ dequantized(pairs).T + bias`` on CUDA, reading the 4-bit weights (not a dequantized copy); with
    the prologues / residual epilogue of :func:`rag.llm.fastgen.gemv.fused_gemv`."""
    x, up_, g, res, pro = fused_args(x, up, norm_weight, residual)
    rows, out_features, in_features = x.shape[0], pairs.shape[0], pairs.shape[1] * 2
    out = torch.empty(rows, out_features, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(out_features, meta["BLOCK_N"]), rows)  # noqa: E731
    _int4_gemv_kernel[grid](x, x.stride(0), up_, up_.stride(0), g, pairs, scales,
                            bias if bias is not None else scales, addend_stride(bias), res, out,
                            out_features, in_features, float(eps), row_bucket(rows), GROUP=group, PRO=pro,
                            HAS_BIAS=bias is not None, HAS_RES=residual is not None)
    return out


def int4_dequantize(pairs: torch.Tensor, scales: torch.Tensor, group: int, dtype: torch.dtype) -> torch.Tensor:
    """The ``[out, in]`` weight in ``dtype`` on CUDA (prefill: a transient copy for one GEMM)."""
    out_features, in_features = pairs.shape[0], pairs.shape[1] * 2
    out = torch.empty(out_features, in_features, dtype=dtype, device=pairs.device)
    block_n, block_k = 32, 256
    grid = (triton.cdiv(out_features, block_n), triton.cdiv(in_features, block_k))
    _int4_dequantize_kernel[grid](pairs, scales, out, out_features, in_features, GROUP=group, BLOCK_N=block_n,
                                  BLOCK_K=block_k)
    return out


# ---- a portable on-disk form (the quantized checkpoint cached beside the native conversion) ----

def portable_tensors(name: str, layer: QuantLinear) -> dict[str, torch.Tensor]:
    """``layer`` as plain CPU tensors under ``name.*`` (the in-memory layout is the same on every device)."""
    out = {f"{name}.qweight": layer.qweight.cpu().contiguous(), f"{name}.scales": layer.scales.cpu().contiguous(),
           f"{name}.shape": torch.tensor([layer.in_features, layer.out_features, layer.group])}
    if layer.bias is not None:
        out[f"{name}.bias"] = layer.bias.cpu().contiguous()
    return out


def from_portable(tensors: dict[str, torch.Tensor], name: str, device: torch.device | str) -> QuantLinear:
    """The inverse of :func:`portable_tensors`, on ``device``."""
    in_features, out_features, group = (int(v) for v in tensors[f"{name}.shape"])
    q = tensors[f"{name}.qweight"].to(device)
    scales = tensors[f"{name}.scales"].to(device)
    bias = tensors[f"{name}.bias"].to(device) if f"{name}.bias" in tensors else None
    return QuantLinear("int4" if group else "int8", in_features, out_features, q, scales, bias, group=group)
