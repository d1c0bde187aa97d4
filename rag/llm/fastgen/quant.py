"""Weight-only int8 / int4 linears for :class:`rag.llm.fastgen.generator.FastGenerator` (``quantize="int8"|"int4"``).

Batch-1 decoding reads every weight once per token, so fewer bytes per weight is more tokens per second:

- **int8**: symmetric, one float32 scale per output row (``w ≈ q * scale``, ``q`` in [-127, 127]). Decode (a few rows
  of ``x``) runs a Triton GEMV that reads the int8 weights once and scales the dot products; prefill dequantizes one
  layer at a time and runs a normal GEMM (it is compute bound, the dequantized copy is transient).
- **int4**: asymmetric per group of ``group`` input columns (``w ≈ (q - 8) * scale + zero``, ``q`` in [0, 15]) in the
  layout of PyTorch's tinygemm kernel (``torch._weight_int4pack_mm``: weights packed by
  ``torch._convert_weight_to_int4pack``, scales and zeros as ``[in / group, out, 2]``), which serves both decode and
  prefill on CUDA.

On CPU (tests, the ``eager`` backend) both kinds compute ``x @ dequantize().T``: the same numbers the GPU kernels
approximate, so a CPU test checks the quantization itself and the GPU bench checks the kernels against it.
Unmerged LoRA adapters stay in bf16 and are added to the quantized base's output, so they can be switched per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU installs: the dequantizing path serves every call
    HAS_TRITON = False

KINDS = ("int8", "int4")
INT4_GROUP = 128  # input columns per int4 scale/zero (tinygemm takes 32, 64, 128 or 256)
INT4_INNER_K_TILES = 8  # tinygemm's packing parameter: K must be a multiple of 16 * this
GEMV_MAX_ROWS = 16  # decode batches up to this many rows take the int8 GEMV kernel; longer inputs dequantize


@dataclass
class QuantLinear:
    """One linear layer's weight, quantized: ``__call__(x [M, in]) -> [M, out]`` in ``x``'s dtype (+ bias)."""

    kind: str
    in_features: int
    out_features: int
    qweight: torch.Tensor  # int8 [out, in] | int4: uint8 [out, in] values 0..15 (CPU) or the tinygemm packing (CUDA)
    scales: torch.Tensor  # int8: float32 [out] | int4: [in / group, out, 2] (scale, zero) in the compute dtype
    bias: torch.Tensor | None
    group: int = 0
    packed: bool = False  # int4 in tinygemm's CUDA layout

    @property
    def nbytes(self) -> int:
        extra = self.bias.nbytes if self.bias is not None else 0
        return self.qweight.nbytes + self.scales.nbytes + extra

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight these numbers stand for, ``[out, in]`` (float32 unless ``dtype``)."""
        if self.kind == "int8":
            weight = self.qweight.float() * self.scales[:, None].float()
        else:
            q = unpack_int4(self) if self.packed else self.qweight
            groups = q.float().view(self.out_features, -1, self.group)  # [out, in / group, group]
            scale, zero = self.scales.float().permute(1, 0, 2).unbind(-1)  # each [out, in / group]
            weight = ((groups - 8) * scale[..., None] + zero[..., None]).view(self.out_features, self.in_features)
        return weight if dtype is None else weight.to(dtype)

    def __call__(self, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        bias = self.bias if with_bias else None
        if x.device.type == "cuda":
            if self.kind == "int4" and self.packed:
                out = torch._weight_int4pack_mm(x.contiguous(), self.qweight, self.group, self.scales)
                return out if bias is None else out + bias
            if self.kind == "int8" and x.shape[0] <= GEMV_MAX_ROWS:
                return int8_gemv(x, self.qweight, self.scales, bias)
        return F.linear(x, self.dequantize(x.dtype), bias)


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
        if size <= group and in_features % size == 0 and in_features % (16 * INT4_INNER_K_TILES) == 0 \
                and out_features % 8 == 0:
            return size
    return 0


def quantize_linear(weight: torch.Tensor, bias: torch.Tensor | None, kind: str, group: int = INT4_GROUP) -> QuantLinear:
    """Quantize one ``nn.Linear``'s weight (``[out, in]``). int4 falls back to int8 for shapes tinygemm cannot take."""
    if kind not in KINDS:
        raise ValueError(f"quantize={kind!r} is not one of {', '.join(KINDS)}")
    out_features, in_features = weight.shape
    bias = None if bias is None else bias.detach()
    size = int4_group_for(in_features, out_features, group) if kind == "int4" else 0
    if kind == "int8" or not size:
        q, scale = quantize_int8(weight.detach())
        return QuantLinear("int8", in_features, out_features, q, scale, bias)
    q, scales_zeros = quantize_int4(weight.detach(), size)
    layer = QuantLinear("int4", in_features, out_features, q, scales_zeros.to(weight.dtype), bias, group=size)
    if weight.device.type == "cuda":
        layer.qweight = pack_int4(q)
        layer.packed = True
    return layer


def concat_quant(parts: list[QuantLinear]) -> QuantLinear:
    """Layers of one kind and group that read the same input, as one layer whose outputs are theirs side by side
    (int8 rows keep their scales; int4 values are joined unpacked and packed again)."""
    first = parts[0]
    bias = None if any(p.bias is None for p in parts) else torch.cat([p.bias for p in parts])  # type: ignore[misc]
    out_features = sum(p.out_features for p in parts)
    if first.kind == "int8":
        return QuantLinear("int8", first.in_features, out_features, torch.cat([p.qweight for p in parts]),
                           torch.cat([p.scales for p in parts]), bias)
    values = torch.cat([unpack_int4(p) if p.packed else p.qweight for p in parts])
    layer = QuantLinear("int4", first.in_features, out_features, values, torch.cat([p.scales for p in parts], dim=1),
                        bias, group=first.group)
    if first.packed:
        layer.qweight, layer.packed = pack_int4(values), True
    return layer


def nibble_pairs(q: torch.Tensor) -> torch.Tensor:
    """uint8 ``[out, in]`` values 0..15 -> uint8 ``[out, in / 2]``, two values a byte, high nibble first."""
    return (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 ``[out, in]`` values 0..15 -> tinygemm's packed CUDA layout (from :func:`nibble_pairs`)."""
    return torch._convert_weight_to_int4pack(nibble_pairs(q).contiguous(), INT4_INNER_K_TILES)


def unpack_int4(layer: QuantLinear) -> torch.Tensor:
    """The 0..15 values of a packed int4 layer, recovered through the kernel itself (identity input, zero offsets)."""
    eye = torch.eye(layer.in_features, device=layer.qweight.device, dtype=layer.scales.dtype)
    unit = torch.zeros_like(layer.scales)
    unit[..., 0] = 1  # scale 1, zero 0: the kernel returns (q - 8)
    raw = torch._weight_int4pack_mm(eye, layer.qweight, layer.group, unit)  # [in, out]
    return (raw.t().float() + 8).round().to(torch.uint8)


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


if HAS_TRITON:

    @triton.autotune(configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
                              for n, k, w in ((4, 1024, 4), (8, 512, 4), (16, 256, 4), (16, 512, 8), (32, 256, 8),
                                              (8, 1024, 8))],
                     key=["N", "K"])
    @triton.jit
    def _int8_gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, N, K, HAS_BIAS: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # program (block of BLOCK_N output rows, row m of x): dot products of those weight rows with x[m]
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.program_id(1)
        row_ok = rows < N
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            x = tl.load(x_ptr + m * K + cols, mask=col_ok, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0)
            acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        acc = acc * tl.load(s_ptr + rows, mask=row_ok, other=0.0)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + m * N + rows, acc.to(out_ptr.dtype.element_ty), mask=row_ok)


def int8_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [M, in] @ (qweight * scales).T + bias`` on CUDA, reading the int8 weights (not a dequantized copy)."""
    if not HAS_TRITON:
        return F.linear(x, (qweight.float() * scales[:, None]).to(x.dtype), bias)
    x = x.contiguous()
    rows, (out_features, in_features) = x.shape[0], qweight.shape
    out = torch.empty(rows, out_features, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(out_features, meta["BLOCK_N"]), rows)  # noqa: E731
    _int8_gemv_kernel[grid](x, qweight, scales, bias if bias is not None else scales, out, out_features, in_features,
                            HAS_BIAS=bias is not None)
    return out


# ---- a portable on-disk form (the quantized checkpoint cached beside the native conversion) ----

def portable_tensors(name: str, layer: QuantLinear) -> dict[str, torch.Tensor]:
    """``layer`` as plain CPU tensors under ``name.*``: int4 is stored as two values a byte (high nibble first), not in
    tinygemm's packing, which is a CUDA kernel detail that may change between PyTorch versions."""
    q = unpack_int4(layer) if layer.kind == "int4" and layer.packed else layer.qweight
    if layer.kind == "int4":
        q = nibble_pairs(q)
    out = {f"{name}.qweight": q.cpu().contiguous(), f"{name}.scales": layer.scales.cpu().contiguous(),
           f"{name}.shape": torch.tensor([layer.in_features, layer.out_features, layer.group])}
    if layer.bias is not None:
        out[f"{name}.bias"] = layer.bias.cpu().contiguous()
    return out


def from_portable(tensors: dict[str, torch.Tensor], name: str, device: torch.device | str) -> QuantLinear:
    """The inverse of :func:`portable_tensors`, on ``device`` (int4 re-packed for tinygemm on CUDA)."""
    in_features, out_features, group = (int(v) for v in tensors[f"{name}.shape"])
    q = tensors[f"{name}.qweight"].to(device)
    scales = tensors[f"{name}.scales"].to(device)
    bias = tensors[f"{name}.bias"].to(device) if f"{name}.bias" in tensors else None
    if not group:
        return QuantLinear("int8", in_features, out_features, q, scales, bias)
    values = torch.stack([q >> 4, q & 15], dim=-1).view(out_features, in_features)
    layer = QuantLinear("int4", in_features, out_features, values, scales, bias, group=group)
    if torch.device(device).type == "cuda":
        layer.qweight, layer.packed = pack_int4(values), True
    return layer
