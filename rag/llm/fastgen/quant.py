"""Weight-only int8 / int4 linears for :class:`rag.llm.fastgen.generator.FastGenerator` (``quantize="int8"|"int4"``).

Batch-1 decoding reads every weight once per token, so fewer bytes per weight is more tokens per second:

- **int8**: symmetric, one float32 scale per output row (``w ≈ q * scale``, ``q`` in [-127, 127]). Decode (a few rows
  of ``x``) runs a Triton GEMV that reads the int8 weights once and scales the dot products; prefill dequantizes one
  layer at a time and runs a normal GEMM (it is compute bound, the dequantized copy is transient).
- **int4**: asymmetric per group of ``group`` input columns with an integer zero point (``w ≈ (q - zp) * scale``,
  ``q`` and ``zp`` in [0, 15]), two values a byte (``[out, in / 2]``), (scale, zero point) as ``[in / group, out,
  2]``. Within a group the nibbles are interleaved per 32-bit word so that nibbles ``k`` and ``k + 4`` of a word are
  two adjacent columns (:func:`pack_int4`): one mask of the word makes them a 16-bit pair in the order x's columns
  lie in memory. Decode runs a Triton GEMV that unpacks the nibbles in registers and applies each group's scale to
  its partial dot product; prefill dequantizes one layer with a Triton kernel and runs a normal GEMM. The same
  layout on every device and in the cache file: no private PyTorch kernel (tinygemm's packing, used before, changed
  format between PyTorch versions and was slow for prefill: 0.78 s for a 2,000-token prompt on an H100).

The int4 decode GEMV, by default (:data:`INT4_DIRECT`, bf16 models), reads x itself: each word's nibble pairs become
bf16 pairs ``128 + q`` with one ``lop3`` (or-ed into the mantissa of 128.0), minus ``128 + zp`` (exact), multiplied
with x's own bf16 pairs by packed bf16 instructions (``fma.rn.bf16x2``, compute capability 8.0 and later), the four
products of a word summed in bf16 and then in float32 per group; the prologue is applied per pair of x (RMSNorm's
weight, with 1 / rms from the squares at the end; ``x * up``). One launch per linear. Otherwise (fp16 models, the
``silu(x) * up`` prologue, or the switch off) :data:`INT4_PAIRS`: a small kernel (:func:`int4_pairs`) applies the
prologue to ``x`` once per launch and writes it as fp16 pairs, scaled so that no fp16 sum overflows, and the pair
GEMV multiplies them with packed half-precision instructions (the zero point through each group's sum of x'). Both
take about 3 instructions a weight, against 13.4 for the first float32 kernel (:data:`_int4_gemv_kernel`: nibbles
made into floats by or-ing them into the mantissa of 16.0, the prologue per weight; kept as a baseline).

On CPU (tests, the ``eager`` backend) both kinds compute ``x @ dequantize().T``: the same numbers the GPU kernels
approximate, so a CPU test checks the quantization itself and the GPU bench checks the kernels against it.
Unmerged LoRA adapters stay in their own dtype and are added to the quantized base's output, so they can be switched
per request: at decode the GEMVs add the adapter's B projection in their epilogue (``lora=(low, b)``,
:mod:`rag.llm.fastgen.gemv`), the caller computing only ``low = x @ A^T``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rag.llm.fastgen import gemv
from rag.llm.fastgen.gemv import (
    MAX_ROWS,
    addend_stride,
    fused_args,
    lora_args,
    pdl_on,
    prologue,
    reference,
    row_bucket,
    split_buffers,
)

try:
    import triton
    import triton.language as tl

    from rag.llm.fastgen.gemv import finish_store, launch_gemv, pdl_begin, prologue_load, prune_split

    HAS_TRITON = True
except ImportError:  # CPU installs: the dequantizing path serves every call
    HAS_TRITON = False

KINDS = ("int8", "int4")
INT4_GROUP = 128  # input columns per int4 scale / zero point
GEMV_MAX_ROWS = MAX_ROWS  # decode batches up to this many rows take the GEMV kernels; longer inputs dequantize


@dataclass
class QuantLinear:
    """One linear layer's weight, quantized: ``__call__(x [M, in]) -> [M, out]`` in ``x``'s dtype (+ bias)."""

    kind: str
    in_features: int
    out_features: int
    qweight: torch.Tensor  # int8 [out, in] | int4: uint8 [out, in / 2], two values a byte (:func:`pack_int4`)
    scales: torch.Tensor  # int8: float32 [out] | int4: [in / group, out, 2] (scale, zero point) in the compute dtype
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
            groups = unpack_int4(self.qweight, self.group).float().view(self.out_features, -1, self.group)  # [out, in / group, group]
            scale, zp = self.scales.float().permute(1, 0, 2).unbind(-1)  # each [out, in / group]
            weight = ((groups - zp[..., None]) * scale[..., None]).view(self.out_features, self.in_features)
        return weight if dtype is None else weight.to(dtype)

    def __call__(self, x: torch.Tensor, with_bias: bool = True, add: torch.Tensor | None = None, *,
                 norm_weight: torch.Tensor | None = None, eps: float = 1e-6, up: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None, lora: tuple[torch.Tensor, torch.Tensor] | None = None,
                 lora_ab: tuple[torch.Tensor, torch.Tensor] | None = None, activated: bool = False,
                 silu_rows: int = 0) -> torch.Tensor:
        """``x @ w.T`` plus the bias (``with_bias``) or plus ``add`` ``[M, out]`` instead (a LoRA delta that already
        holds the bias): on CUDA the GEMV kernels add it as they store, one kernel fewer per linear.

        ``lora = (low [M, R] float32, b [out, R])`` adds ``low @ b.T`` too (an unmerged LoRA adapter: ``low = x @
        A^T``, ``b`` its scaled B; ``R`` a power of two, zero-padded): the GEMV kernels add it in their epilogue;
        elsewhere (CPU, prefill) it joins the bias as an addend first, the same formula.

        ``norm_weight`` / ``up`` / ``residual`` are the fused decode step's prologues and epilogue, as in
        :func:`rag.llm.fastgen.gemv.fused_gemv`: RMSNorm of ``x`` first, or ``silu(x) * up`` first; ``residual``
        ``[M, out]`` added at the end; ``activated`` / ``silu_rows`` as there (``up`` multiplies SiLU's output
        already made; SiLU of the first ``silu_rows`` outputs).

        ``lora_ab = (a [R, in], b [out, R])`` is ``lora`` with ``low = prologue(x) @ a.T`` left to this call (the fused
        walk with an adapter on): the int4 pair GEMV makes it in its pairs kernel, the int4 bf16 GEMV in that kernel
        without the pairs (:func:`int4_lora_low`: one program per rank), elsewhere it is computed first."""
        gemv_rows = x.device.type == "cuda" and HAS_TRITON and x.shape[0] <= GEMV_MAX_ROWS  # decode: the GEMVs
        if lora_ab is not None:
            if lora is not None:
                raise ValueError("lora or lora_ab, not both")
            if not (gemv_rows and self.kind == "int4"):
                h = prologue(x, norm_weight=norm_weight, eps=eps, up=up, activated=activated)
                lora, lora_ab = (h @ lora_ab[0].float().t(), lora_ab[1]), None
        bias = add if add is not None else self.bias if with_bias else None
        fused = norm_weight is not None or up is not None or residual is not None or silu_rows > 0
        if norm_weight is not None and up is not None:
            raise ValueError("a quantized linear takes norm_weight or up, not both")
        if gemv_rows:
            if self.kind == "int8":
                return int8_gemv(x, self.qweight, self.scales, bias, norm_weight=norm_weight, eps=eps, up=up,
                                 residual=residual, lora=lora, activated=activated, silu_rows=silu_rows)
            return int4_gemv(x, self.qweight, self.scales, self.group, bias, norm_weight=norm_weight, eps=eps,
                             up=up, residual=residual, lora=lora, lora_ab=lora_ab, activated=activated,
                             silu_rows=silu_rows)
        if lora is not None:  # no GEMV epilogue here: bias + low @ b.T as one addend
            extra = lora[0].float() @ lora[1].float().t()
            bias = (extra if bias is None else extra + bias.float()).to(x.dtype)
        if x.device.type == "cuda" and HAS_TRITON and self.kind == "int4" and not fused:
            return linear_plus(x, int4_dequantize(self.qweight, self.scales, self.group, x.dtype), bias)
        if fused:
            weight = self.dequantize(x.dtype) if x.device.type != "cuda" or self.kind == "int8" else \
                int4_dequantize(self.qweight, self.scales, self.group, x.dtype)
            return reference(x, weight, norm_weight=norm_weight, eps=eps, up=up, bias=bias, residual=residual,
                             activated=activated, silu_rows=silu_rows)
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
    """``[out, in]`` -> (uint8 ``[out, in]`` values 0..15, (scale, zero point) ``[in / group, out, 2]`` float32):
    ``w ≈ (q - zp) * scale`` with an integer zero point ``zp`` in [0, 15] per group. Each group's range is widened to
    hold 0 (GPTQ's convention), so ``zp`` always lies on the grid and the error stays within half a step."""
    out_features, in_features = weight.shape
    w = weight.float().view(out_features, in_features // group, group)
    low, high = w.amin(dim=-1).clamp_max(0), w.amax(dim=-1).clamp_min(0)
    scale = ((high - low) / 15).clamp_min(1e-12)
    zp = (-low / scale).round().clamp(0, 15)
    q = (w / scale[..., None] + zp[..., None]).round().clamp(0, 15).to(torch.uint8)
    return q.view(out_features, in_features), torch.stack([scale, zp], dim=-1).transpose(0, 1).contiguous()


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
    return QuantLinear("int4", in_features, out_features, pack_int4(q, size), scales_zeros.to(weight.dtype), bias,
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


def pack_int4(q: torch.Tensor, group: int) -> torch.Tensor:
    """uint8 ``[out, in]`` values 0..15 -> uint8 ``[out, in / 2]``, two values a byte: per group of ``group`` columns,
    ``group / 8`` little-endian 32-bit words; nibbles ``k`` and ``k + 4`` (bits ``4 k ..`` and ``16 + 4 k ..``) of word
    ``j`` are the adjacent columns ``2 (k group / 8 + j)`` and that plus one. So one mask of ``word >> 4 k`` puts a column
    pair into the two halves of a 32-bit register, the order of a bf16 / fp16 pair of ``x`` in memory, and for each
    ``k`` the words of a row meet consecutive pairs of ``x`` (the GEMV loads 16 bytes a thread of both)."""
    out_features, in_features = q.shape
    words = group // 8
    # [out, groups, k // 2, k % 2 (low / high nibble of a byte), word j, column of the pair h]; byte 2 h + k // 2
    nib = q.view(out_features, in_features // group, 2, 2, words, 2)
    pairs = (nib[:, :, :, 0] | nib[:, :, :, 1] << 4).to(torch.uint8)  # [out, groups, k // 2, words, h]
    return pairs.permute(0, 1, 3, 4, 2).reshape(out_features, in_features // 2)


def unpack_int4(packed: torch.Tensor, group: int) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: uint8 ``[out, in / 2]`` -> values 0..15 ``[out, in]`` in column order."""
    out_features, in_features = packed.shape[0], packed.shape[1] * 2
    words = group // 8
    pairs = packed.view(out_features, in_features // group, words, 2, 2).permute(0, 1, 4, 2, 3)  # [.., k//2, j, h]
    return torch.stack([pairs & 15, pairs >> 4], dim=3).reshape(out_features, in_features)


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


INLINE_ASM = True  # the int4 GEMV's lop3 (see _float_of_field); False: plain Triton operations (the same numbers)


# int4 decode GEMVs through fp16 pairs (:func:`int4_gemv`): x made once per launch into fp16 pairs that match the
# nibble layout (:func:`int4_pairs`), then packed half-precision arithmetic on the weights; False: the float32 kernel
# that applies the prologue per weight (:data:`_int4_gemv_kernel`). On an H100: gate/up 57.3 -> 33.2 us, decoding
# 329.0 -> 369.5 tok/s with the fused walk (docs/BENCHMARKS.md)
INT4_PAIRS = True
# int4 decode GEMVs on bf16 activations read x itself (:data:`_int4_bf16_gemv_kernel`): nibble pairs made into bf16
# pairs that meet x's adjacent columns as they lie in memory, packed bf16 arithmetic, the prologue (RMSNorm's weight,
# ``x * up``) per pair -- no pairs kernel, one launch per linear. H100: per layer the same 76.1 us as the pairs
# kernels + pair GEMVs (o 7.9 vs 10.5 us faster, gate/up 34.7 vs 31.5 slower), decoding 386.6 tok/s (pair path
# 384.1 the session before; docs/BENCHMARKS.md). False (and fp16 models, and the ``silu(x) * up`` prologue):
# :data:`INT4_PAIRS` decides
INT4_DIRECT = True


def int4_prologue_once() -> bool:
    """Whether the int4 decode GEMVs make their prologue once per launch or per pair of x (the bf16 or the fp16-pair
    GEMV), not once per weight (the float32 kernel): then the fused layer walk is the faster one for int4."""
    return INT4_DIRECT or INT4_PAIRS
# the largest |x'| of the pairs: a product with q - 8 stays within 8 * 1024, four of them summed within 32768, under
# float16's largest value (65504); the smallest values that matter stay far above its subnormals (6e-5)
PAIR_TOP = 1024.0


def use_asm(x: torch.Tensor) -> bool:
    """Whether the int4 GEMV uses inline PTX: on CUDA, unless :data:`INLINE_ASM` is off (Triton's interpreter runs on CPU
    tensors and cannot run PTX)."""
    return INLINE_ASM and x.is_cuda


def int8_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, *,
              norm_weight: torch.Tensor | None = None, eps: float = 1e-6, up: torch.Tensor | None = None,
              residual: torch.Tensor | None = None,
              lora: tuple[torch.Tensor, torch.Tensor] | None = None, activated: bool = False,
              silu_rows: int = 0) -> torch.Tensor:
    """``x [M, in] @ (qweight * scales).T + bias`` on CUDA, reading the int8 weights (not a dequantized copy); with
    the prologues / epilogues of :func:`rag.llm.fastgen.gemv.fused_gemv` and the LoRA epilogue (``lora``)."""
    if not HAS_TRITON:
        return reference(x, (qweight.float() * scales[:, None]).to(x.dtype), norm_weight=norm_weight, eps=eps, up=up,
                         bias=bias, residual=residual, lora=lora, activated=activated, silu_rows=silu_rows)
    return launch_gemv(x, qweight, scales, bias, norm_weight=norm_weight, eps=eps, up=up, residual=residual,
                       lora=lora, activated=activated, silu_rows=silu_rows)


if HAS_TRITON:

    # (t & mask) ^ bits in one instruction (lop3 with the truth table 0x6a = (a & b) ^ c): LLVM splits the two
    # operations and ptxas does not join them again, and the integer units (half the FMA rate) are the GEMVs' limit
    _INT4_LOP3 = tl.constexpr("lop3.b32 $0, $1, 7864320, 1098907648, 0x6a;")  # 0x780000, 0x41800000

    @triton.jit
    def _float_of_field(w, SHIFT: tl.constexpr, MASK: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
        """The bit field of the int32 words ``w`` moved to the mantissa ``MASK`` of the float ``BITS`` (``SHIFT`` > 0:
        left, < 0: right): ``BITS``'s value plus the field, exactly, with no int-to-float conversion. ``ASM`` (CUDA;
        not under the interpreter): the mask and xor as one ``lop3``."""
        if SHIFT >= 0:
            t = w << SHIFT
        else:
            t = w >> (-SHIFT)
        if ASM:  # MASK, BITS as in _INT4_LOP3
            t = tl.inline_asm_elementwise(_INT4_LOP3, "=r,r", [t], dtype=tl.int32, is_pure=True, pack=1)
        else:
            t = (t & MASK) ^ BITS
        return t.to(tl.float32, bitcast=True)

    @triton.jit
    def _program_begin(w_ptr, w_stride, N, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr,
                       SPLIT: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr):
        """An int4 GEMV program's work: (its BLOCK_N output rows, which of them exist, its row m of x, its slice s of
        SPLIT, and the groups [start, end) of that slice, a multiple of GROUPS each but the last), after
        :func:`rag.llm.fastgen.gemv.pdl_begin` (PDL: its first weight words into L2, then the wait for the previous
        kernel)."""
        n_groups = K // GROUP
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        s = tl.program_id(2)
        per = tl.cdiv(tl.cdiv(n_groups, SPLIT), GROUPS) * GROUPS
        start = s * per
        pdl_begin(w_ptr, w_stride, rows, rows < N, start * (GROUP // 8), K // 8, PDL, PREFETCH)
        return rows, rows < N, tl.program_id(1), s, start, tl.minimum(start + per, n_groups)

    @triton.jit
    def _load_words(w_ptr, w_stride, rows, row_ok, g, n_groups, W: tl.constexpr):
        """The packed int32 words ``[BLOCK_N, GROUPS, W]`` of groups ``g`` of the weight rows ``rows`` (zeros past the
        ends), and which of those groups exist."""
        g_ok = g < n_groups
        words = (g[:, None] * W + tl.arange(0, W)[None, :])[None, :, :]
        return tl.load(w_ptr + rows[:, None, None] * w_stride + words, mask=row_ok[:, None, None] & g_ok[None, :, None],
                       other=0), g_ok

    @triton.autotune(configs=[triton.Config({"BLOCK_N": n, "GROUPS": g, "SPLIT": k}, num_warps=w, num_stages=s)
                              for n, g, w, s, k in ((16, 2, 4, 3, 1), (8, 4, 4, 3, 1), (32, 2, 8, 3, 1),
                                                    (16, 4, 8, 3, 1), (64, 1, 8, 3, 1), (16, 8, 8, 2, 1),
                                                    # split-K, for layers of few rows (q/k/v, o, down)
                                                    (32, 2, 8, 3, 4), (16, 2, 4, 3, 4), (32, 4, 8, 2, 4),
                                                    (64, 4, 4, 2, 4))],
                     key=["N", "K", "ROW_BUCKET", "GROUP", "PRO"],  # LORA_R not in it: as gemv_kernel
                     prune_configs_by={"early_config_prune": prune_split})
    @triton.jit
    def _int4_gemv_kernel(x_ptr, x_stride, up_ptr, up_stride, g_ptr, w_ptr, w_stride, s_ptr, b_ptr, b_stride, r_ptr,
                          lo_ptr, lb_ptr, out_ptr, ws_ptr, sq_ptr, cnt_ptr, N, K, eps, silu_rows, ROW_BUCKET,
                          GROUP: tl.constexpr,
                          PRO: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, LORA_R: tl.constexpr,
                          ASM: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_N: tl.constexpr,
                          GROUPS: tl.constexpr, SPLIT: tl.constexpr):
        # program (block of BLOCK_N output rows, row m of x); per step GROUPS groups, read as [BLOCK_N, GROUPS, W]
        # int32 words (W = GROUP / 8) whose nibble k + 4 h is column 2 (k W + j) + h of the group (pack_int4). Nibble
        # q becomes the float 16 + q (0x41800000 | q << 19); with w = (q - zp) * scale = (16 + q) * scale - (16 +
        # zp) scale, each group adds scale * sum((16 + q) x) - (16 + zp) scale * sum(x). x is prologue(x) first
        # (PRO 1: RMSNorm, its 1 / rms applied at the end, as both terms are linear in x; PRO 2: silu(x) * up).
        # Program (.., .., s) of SPLIT takes the s-th slice of the groups (_finish adds the slices up).
        W: tl.constexpr = GROUP // 8
        rows, row_ok, m, s, start, n_groups = _program_begin(w_ptr, w_stride, N, K, GROUP, BLOCK_N, GROUPS, SPLIT,
                                                             PDL, PREFETCH)
        g_in = tl.arange(0, GROUPS)
        j = tl.arange(0, W)
        acc = tl.zeros([BLOCK_N, GROUPS, W], dtype=tl.float32)
        squares = tl.zeros([1, GROUPS, W], dtype=tl.float32)
        for g0 in range(start, n_groups, GROUPS):
            g = g0 + g_in
            w, g_ok = _load_words(w_ptr, w_stride, rows, row_ok, g, n_groups, W)
            part = tl.zeros([BLOCK_N, GROUPS, W], dtype=tl.float32)
            xs = tl.zeros([1, GROUPS, W], dtype=tl.float32)
            for i in tl.static_range(8):
                cols = (g[:, None] * GROUP + 2 * ((i % 4) * W + j[None, :]) + i // 4)[None, :, :]
                xi, squares = prologue_load(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, cols, cols < K, squares,
                                            PRO)
                part += _float_of_field(w, 19 - 4 * i, 0x780000, 0x41800000, ASM) * xi
                xs += xi
            at = (g[None, :] * N + rows[:, None]) * 2
            ok = row_ok[:, None] & g_ok[None, :]
            scale = tl.load(s_ptr + at, mask=ok, other=0.0).to(tl.float32)
            low = -(16.0 + tl.load(s_ptr + at + 1, mask=ok, other=0.0).to(tl.float32)) * scale
            acc += scale[:, :, None] * part + low[:, :, None] * xs
        finish_store(tl.sum(tl.sum(acc, axis=2), axis=1), tl.sum(tl.sum(squares, axis=2), axis=1), ws_ptr, sq_ptr, cnt_ptr,
                s, m, K, eps, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr, out_ptr, N, rows, row_ok, silu_rows, PRO, HAS_BIAS,
                HAS_RES, LORA_R, SPLIT)

    @triton.jit
    def _int4_dequantize_kernel(w_ptr, w_stride, s_ptr, out_ptr, N, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
        # program (block of BLOCK_N rows, one group): nibble k + 4 h of word j -> column 2 (k W + j) + h of the group
        W: tl.constexpr = GROUP // 8
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        g = tl.program_id(1)
        j = tl.arange(0, W)
        row_ok = rows < N
        ok = row_ok[:, None] & (j < W)[None, :]
        w = tl.load(w_ptr + rows[:, None] * w_stride + g * W + j[None, :], mask=ok, other=0)
        at = (g * N + rows) * 2
        scale = tl.load(s_ptr + at, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        zp = tl.load(s_ptr + at + 1, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        for i in tl.static_range(8):
            q = ((w >> (4 * i)) & 15).to(tl.float32) - zp
            tl.store(out_ptr + rows[:, None] * K + g * GROUP + 2 * ((i % 4) * W + j[None, :]) + i // 4,
                     (q * scale).to(out_ptr.dtype.element_ty), mask=ok)

    # sum over a word's 8 nibbles of (q - 8) * x' (:func:`_pair_dot`): nibbles k and k + 4 become the fp16 pair
    # (1024 + q, 1024 + q') by one lop3 each ((w >> 4k) & 0x000F000F | 0x64006400), minus 1032 gives q - 8 exactly,
    # then four packed multiply-adds with the x' pairs and one float32 sum of the two halves: ~2.3 instructions a
    # weight, against ~8.6 of the float32 kernel (13.4 with its prologue, docs/BENCHMARKS.md)
    _PAIR_TOP = tl.constexpr(PAIR_TOP)
    _PAIR_DOT = tl.constexpr("""{
    .reg .b32 t0, t1, t2, t3, acc, c;
    .reg .b16 lo, hi;
    .reg .f32 flo, fhi, sum;
    mov.b32 c, 0x64086408;
    shr.u32 t1, $1, 4;
    shr.u32 t2, $1, 8;
    shr.u32 t3, $1, 12;
    lop3.b32 t0, $1, 0x000F000F, 0x64006400, 0xea;
    lop3.b32 t1, t1, 0x000F000F, 0x64006400, 0xea;
    lop3.b32 t2, t2, 0x000F000F, 0x64006400, 0xea;
    lop3.b32 t3, t3, 0x000F000F, 0x64006400, 0xea;
    sub.f16x2 t0, t0, c;
    sub.f16x2 t1, t1, c;
    sub.f16x2 t2, t2, c;
    sub.f16x2 t3, t3, c;
    mul.rn.f16x2 acc, t0, $2;
    fma.rn.f16x2 acc, t1, $3, acc;
    fma.rn.f16x2 acc, t2, $4, acc;
    fma.rn.f16x2 acc, t3, $5, acc;
    mov.b32 {lo, hi}, acc;
    cvt.f32.f16 flo, lo;
    cvt.f32.f16 fhi, hi;
    add.f32 sum, flo, fhi;
    mov.b32 $0, sum;
    }""")

    @triton.jit
    def _pair_term(w, xk, SHIFT: tl.constexpr):
        """Nibbles ``SHIFT / 4`` and ``SHIFT / 4 + 4`` of the words ``w`` (minus 8) times the fp16 pair ``xk``, summed
        in float32 (:func:`_pair_dot` without inline PTX)."""
        q_lo = ((w >> SHIFT) & 15).to(tl.float32) - 8.0
        q_hi = ((w >> (SHIFT + 16)) & 15).to(tl.float32) - 8.0
        x_lo = (xk & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        x_hi = (xk >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        return q_lo * x_lo + q_hi * x_hi

    @triton.jit
    def _pair_dot(w, x0, x1, x2, x3, ASM: tl.constexpr):
        """Per int32 word of ``w``: the sum over its 8 nibbles of (q - 8) * x', ``xk`` the fp16 pairs (x' of nibble k,
        x' of nibble k + 4) as int32. ``ASM``: packed fp16 arithmetic in inline PTX (``_PAIR_DOT``; the sum of four
        products rounded to fp16 before the float32 add); else float32 operations."""
        if ASM:
            bits = tl.inline_asm_elementwise(_PAIR_DOT, "=r,r,r,r,r,r", [w, x0, x1, x2, x3], dtype=tl.int32,
                                             is_pure=True, pack=1)
            return bits.to(tl.float32, bitcast=True)
        else:
            return _pair_term(w, x0, 0) + _pair_term(w, x1, 4) + _pair_term(w, x2, 8) + _pair_term(w, x3, 12)

    @triton.jit
    def _int4_pairs_kernel(x_ptr, x_stride, up_ptr, up_stride, g_ptr, xp_ptr, gs_ptr, sc_ptr, a_ptr, lo_ptr, K, eps,
                           GROUP: tl.constexpr, PRO: tl.constexpr, BLOCK_G: tl.constexpr, LORA_R: tl.constexpr,
                           PDL: tl.constexpr, LOW_ONLY: tl.constexpr):
        # program (m, 0) per row m of x: y = prologue(x[m]) whole (PRO 1: RMSNorm including its 1 / rms; 2: silu(x)
        # * up; 3: x * up), scaled so that max |y'| = PAIR_TOP (sc[m] = the factor back), as fp16 pairs of adjacent
        # columns (y'[2 p], y'[2 p + 1]) at p (the order of the int4 words' nibble pairs, pack_int4), and each
        # group's sum of the fp16 values (gs[m, g], for the zero points). LORA_R > 0: programs (m, 1 + r) each make y
        # too and write low[m, r] = y . A[r] (float32) for the GEMV's LoRA epilogue, A [LORA_R, K] (one program
        # doing all R dot products serially made decoding with an adapter slower than the general walk). LOW_ONLY:
        # no pairs, programs (m, r) make low[m, r] (the bf16 GEMV's LoRA, :func:`int4_lora_low`)
        W: tl.constexpr = GROUP // 8
        m = tl.program_id(0)
        part = tl.program_id(1) + LOW_ONLY
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        g = tl.arange(0, BLOCK_G)
        pair = g[:, None] * (4 * W) + tl.arange(0, 4 * W)[None, :]  # [BLOCK_G, GROUP / 2]: pairs in memory order
        cols = 2 * pair[:, :, None] + tl.arange(0, 2)[None, None, :]  # [BLOCK_G, GROUP / 2, 2]: contiguous
        ok = cols < K
        squares = tl.zeros([BLOCK_G, 4 * W, 2], dtype=tl.float32)
        y, squares = prologue_load(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, cols, ok, squares, PRO)
        if PRO == 1:
            y = y * tl.rsqrt(tl.sum(squares) / K + eps)
        if part > 0:  # launched only with LORA_R > 0
            r = part - 1
            tl.store(lo_ptr + m * LORA_R + r, tl.sum(y * tl.load(a_ptr + r * K + cols, mask=ok, other=0.0).to(tl.float32)))
        else:
            top = tl.max(tl.abs(y))
            scale = tl.where(top > 0, top / _PAIR_TOP, 1.0)
            y16 = (y / scale).to(tl.float16)
            lo16, hi16 = tl.split(y16)
            bits = (lo16.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) | \
                (hi16.to(tl.int16, bitcast=True).to(tl.int32) << 16)
            tl.store(xp_ptr + m * (K // 2) + pair, bits, mask=pair < K // 2)
            sums = tl.sum(tl.sum(y16.to(tl.float32), axis=2), axis=1)
            tl.store(gs_ptr + m * (K // GROUP) + g, sums, mask=g < K // GROUP)
            tl.store(sc_ptr + m, scale)

    @triton.autotune(configs=[triton.Config({"BLOCK_N": n, "GROUPS": g, "SPLIT": k}, num_warps=w, num_stages=s)
                              # 4 to 16 words a thread a step (W = 16): the loop's own work spread over more
                              for n, g, w, s, k in ((16, 2, 4, 3, 1), (16, 4, 4, 3, 1), (16, 8, 4, 3, 1),
                                                    (32, 4, 4, 3, 1), (32, 4, 8, 3, 1), (64, 2, 8, 3, 1),
                                                    (16, 8, 8, 2, 1), (32, 8, 8, 2, 1),
                                                    (16, 4, 4, 3, 2), (16, 4, 4, 3, 4), (32, 4, 8, 2, 4),
                                                    (16, 8, 4, 2, 4))],
                     key=["N", "K", "ROW_BUCKET", "GROUP"],
                     prune_configs_by={"early_config_prune": prune_split})
    @triton.jit
    def _int4_pair_gemv_kernel(xp_ptr, gs_ptr, sc_ptr, w_ptr, w_stride, s_ptr, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr,
                               out_ptr, ws_ptr, sq_ptr, cnt_ptr, N, K, silu_rows, ROW_BUCKET, GROUP: tl.constexpr,
                               HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, LORA_R: tl.constexpr, ASM: tl.constexpr,
                               PDL: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_N: tl.constexpr,
                               GROUPS: tl.constexpr, SPLIT: tl.constexpr):
        # program (block of BLOCK_N output rows, row m of x, slice s of the groups): per step GROUPS groups of words
        # [BLOCK_N, GROUPS, W] and the four x' pairs of each word (_int4_pairs_kernel's layout); each group adds
        # scale * sum((q - 8) x') + (8 - zp) scale * sum(x'); the total times sc[m] (x' = x / sc[m])
        W: tl.constexpr = GROUP // 8
        n_all = K // GROUP
        rows, row_ok, m, s, start, n_groups = _program_begin(w_ptr, w_stride, N, K, GROUP, BLOCK_N, GROUPS, SPLIT,
                                                             PDL, PREFETCH)
        g_in = tl.arange(0, GROUPS)
        j = tl.arange(0, W)
        acc = tl.zeros([BLOCK_N, GROUPS, W], dtype=tl.float32)
        acc_zero = tl.zeros([BLOCK_N, GROUPS], dtype=tl.float32)
        x_row = xp_ptr + m * (K // 2)
        for g0 in range(start, n_groups, GROUPS):
            g = g0 + g_in
            w, g_ok = _load_words(w_ptr, w_stride, rows, row_ok, g, n_groups, W)
            pairs = (g[:, None] * (4 * W) + j[None, :])[None, :, :]
            x_ok = g_ok[None, :, None]
            dot = _pair_dot(w, tl.load(x_row + pairs, mask=x_ok, other=0),
                            tl.load(x_row + pairs + W, mask=x_ok, other=0),
                            tl.load(x_row + pairs + 2 * W, mask=x_ok, other=0),
                            tl.load(x_row + pairs + 3 * W, mask=x_ok, other=0), ASM)
            at = (g[None, :] * N + rows[:, None]) * 2
            ok = row_ok[:, None] & g_ok[None, :]
            scale = tl.load(s_ptr + at, mask=ok, other=0.0).to(tl.float32)
            zero = (8.0 - tl.load(s_ptr + at + 1, mask=ok, other=0.0).to(tl.float32)) * scale
            acc += scale[:, :, None] * dot
            acc_zero += zero * tl.load(gs_ptr + m * n_all + g, mask=g_ok, other=0.0)[None, :]
        total = (tl.sum(tl.sum(acc, axis=2), axis=1) + tl.sum(acc_zero, axis=1)) * tl.load(sc_ptr + m)
        finish_store(total, tl.zeros([1], dtype=tl.float32), ws_ptr, sq_ptr, cnt_ptr, s, m, K, 0.0, b_ptr, b_stride,
                     r_ptr, lo_ptr, lb_ptr, out_ptr, N, rows, row_ok, silu_rows, 0, HAS_BIAS, HAS_RES, LORA_R, SPLIT)

    # bf16 arithmetic of the direct int4 GEMV (:data:`_int4_bf16_gemv_kernel`), per int32 word of nibbles and four int32
    # bf16 pairs of x (``fma.rn.bf16x2``: compute capability 8.0 and later): nibbles k and k + 4 or-ed into the
    # mantissas of the bf16 pair 0x4300 (128) are 128 + q exactly; plus $2, the pair -(128 + zp), is q - zp exactly;
    # four packed multiply-adds with x's pairs, then the two bf16 halves summed in float32: ~2.3 instructions a weight
    _BF16_DOT = tl.constexpr("""{
    .reg .b32 t0, t1, t2, t3, acc, one, nz, lo, hi;
    .reg .f32 flo, fhi, sum;
    mov.b32 one, 0x3F803F80;
    mov.b32 nz, 0x80008000;
    shr.u32 t1, $1, 4;
    shr.u32 t2, $1, 8;
    shr.u32 t3, $1, 12;
    lop3.b32 t0, $1, 0x000F000F, 0x43004300, 0xea;
    lop3.b32 t1, t1, 0x000F000F, 0x43004300, 0xea;
    lop3.b32 t2, t2, 0x000F000F, 0x43004300, 0xea;
    lop3.b32 t3, t3, 0x000F000F, 0x43004300, 0xea;
    fma.rn.bf16x2 t0, t0, one, $2;
    fma.rn.bf16x2 t1, t1, one, $2;
    fma.rn.bf16x2 t2, t2, one, $2;
    fma.rn.bf16x2 t3, t3, one, $2;
    fma.rn.bf16x2 acc, t0, $3, nz;
    fma.rn.bf16x2 acc, t1, $4, acc;
    fma.rn.bf16x2 acc, t2, $5, acc;
    fma.rn.bf16x2 acc, t3, $6, acc;
    shl.b32 lo, acc, 16;
    and.b32 hi, acc, 0xFFFF0000;
    mov.b32 flo, lo;
    mov.b32 fhi, hi;
    add.f32 sum, flo, fhi;
    mov.b32 $0, sum;
    }""")
    # the sum of squares of four bf16 pairs (RMSNorm's), packed multiply-adds, the halves summed in float32
    _BF16_SQUARES = tl.constexpr("""{
    .reg .b32 acc, nz, lo, hi;
    .reg .f32 flo, fhi, sum;
    mov.b32 nz, 0x80008000;
    fma.rn.bf16x2 acc, $1, $1, nz;
    fma.rn.bf16x2 acc, $2, $2, acc;
    fma.rn.bf16x2 acc, $3, $3, acc;
    fma.rn.bf16x2 acc, $4, $4, acc;
    shl.b32 lo, acc, 16;
    and.b32 hi, acc, 0xFFFF0000;
    mov.b32 flo, lo;
    mov.b32 fhi, hi;
    add.f32 sum, flo, fhi;
    mov.b32 $0, sum;
    }""")
    _BF16_MUL = tl.constexpr("{ .reg .b32 nz; mov.b32 nz, 0x80008000; fma.rn.bf16x2 $0, $1, $2, nz; }")

    @triton.jit
    def _bf16_halves(p):
        """The int32 bf16 pairs ``p`` as two float32 tensors (low half, high half), exactly."""
        return (p << 16).to(tl.float32, bitcast=True), (p & -65536).to(tl.float32, bitcast=True)

    @triton.jit
    def _pair_squares(p):
        lo, hi = _bf16_halves(p)
        return lo * lo + hi * hi

    @triton.jit
    def _bf16_term(w, zp, p, SHIFT: tl.constexpr):
        """Nibbles ``SHIFT / 4`` and ``SHIFT / 4 + 4`` of the words ``w`` (minus ``zp``) times the bf16 pair ``p``, in
        float32 (:func:`_bf16_dot` without inline PTX)."""
        lo, hi = _bf16_halves(p)
        return (((w >> SHIFT) & 15).to(tl.float32) - zp) * lo + (((w >> (SHIFT + 16)) & 15).to(tl.float32) - zp) * hi

    @triton.jit
    def _bf16_round(v):
        """The bits of float32 ``v`` rounded to the nearest bf16 (ties to even), in the high 16 bits of an int32."""
        b = v.to(tl.int32, bitcast=True)
        return (b + 0x7FFF + ((b >> 16) & 1)) & -65536

    @triton.jit
    def _bf16_mul(a, b, ASM: tl.constexpr):
        """The bf16 pairs ``a * b`` (int32 pairs in and out), each product rounded to bf16."""
        if ASM:
            return tl.inline_asm_elementwise(_BF16_MUL, "=r,r,r", [a, b], dtype=tl.int32, is_pure=True, pack=1)
        else:
            a_lo, a_hi = _bf16_halves(a)
            b_lo, b_hi = _bf16_halves(b)
            return ((_bf16_round(a_lo * b_lo) >> 16) & 0xFFFF) | _bf16_round(a_hi * b_hi)

    @triton.jit
    def _bf16_squares(x0, x1, x2, x3, ASM: tl.constexpr):
        """Per element: the sum of the squares of the eight bf16 values of the pairs ``x0 .. x3``, float32."""
        if ASM:
            bits = tl.inline_asm_elementwise(_BF16_SQUARES, "=r,r,r,r,r", [x0, x1, x2, x3], dtype=tl.int32,
                                             is_pure=True, pack=1)
            return bits.to(tl.float32, bitcast=True)
        else:
            return _pair_squares(x0) + _pair_squares(x1) + _pair_squares(x2) + _pair_squares(x3)

    @triton.jit
    def _bf16_dot(w, zp, x0, x1, x2, x3, ASM: tl.constexpr):
        """Per int32 word of ``w``: the sum over its 8 nibbles of (q - zp) * x, ``xk`` the bf16 pairs of x that
        nibbles k and k + 4 hold (pack_int4), ``zp`` the word's group's zero point (float32, an integer). ``ASM``:
        packed bf16 arithmetic (``_BF16_DOT``; products and the four-term sums rounded to bf16); else float32."""
        if ASM:
            c = 0xC300 + zp.to(tl.int32)  # the bf16 -(128 + zp)
            bits = tl.inline_asm_elementwise(_BF16_DOT, "=r,r,r,r,r,r,r", [w, (c << 16) | c, x0, x1, x2, x3],
                                             dtype=tl.int32, is_pure=True, pack=1)
            return bits.to(tl.float32, bitcast=True)
        else:
            return _bf16_term(w, zp, x0, 0) + _bf16_term(w, zp, x1, 4) + _bf16_term(w, zp, x2, 8) + \
                _bf16_term(w, zp, x3, 12)

    @triton.jit
    def _bf16_input(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, at, ok, PRO: tl.constexpr, ASM: tl.constexpr):
        """The bf16 pairs of prologue(x[m]) at pair indices ``at`` (x, up, g int32 views of bf16; strides in pairs): x;
        PRO 1 x * g (RMSNorm's weight; its 1 / rms at the end); PRO 3 x * up. Also the raw pairs (for the squares)."""
        x = tl.load(x_ptr + m * x_stride + at, mask=ok, other=0)
        y = x
        if PRO == 1:
            y = _bf16_mul(x, tl.load(g_ptr + at, mask=ok, other=0), ASM)
        if PRO == 3:
            y = _bf16_mul(x, tl.load(up_ptr + m * up_stride + at, mask=ok, other=0), ASM)
        return y, x

    @triton.autotune(configs=[triton.Config({"BLOCK_N": n, "GROUPS": g, "SPLIT": k}, num_warps=w, num_stages=s)
                              # 1 to 4 rows a thread (64 rows x 2 groups over 4 warps: 4), so x's pairs and their
                              # prologue are loaded and made once for several rows
                              for n, g, w, s, k in ((16, 2, 4, 3, 1), (16, 4, 4, 3, 1), (32, 2, 4, 3, 1),
                                                    (32, 4, 4, 3, 1), (64, 2, 4, 3, 1), (64, 2, 8, 3, 1),
                                                    (32, 4, 8, 3, 1), (64, 4, 8, 2, 1), (16, 8, 4, 2, 1),
                                                    (16, 4, 4, 3, 2), (16, 4, 4, 3, 4), (32, 2, 4, 3, 4),
                                                    (32, 4, 8, 2, 4), (16, 8, 4, 2, 4), (64, 2, 4, 3, 4))],
                     key=["N", "K", "ROW_BUCKET", "GROUP", "PRO"],  # LORA_R not in it: as gemv_kernel
                     prune_configs_by={"early_config_prune": prune_split})
    @triton.jit
    def _int4_bf16_gemv_kernel(x_ptr, x_stride, up_ptr, up_stride, g_ptr, w_ptr, w_stride, s_ptr, b_ptr, b_stride,
                               r_ptr, lo_ptr, lb_ptr, out_ptr, ws_ptr, sq_ptr, cnt_ptr, N, K, eps, silu_rows,
                               ROW_BUCKET, GROUP: tl.constexpr, PRO: tl.constexpr, HAS_BIAS: tl.constexpr,
                               HAS_RES: tl.constexpr, LORA_R: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr,
                               PREFETCH: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr,
                               SPLIT: tl.constexpr):
        # program (block of BLOCK_N output rows, row m of x, slice s of the groups): per step GROUPS groups of words
        # [BLOCK_N, GROUPS, W] and, for each, the four bf16 pairs of x its nibble pairs meet, read from x itself
        # (int32 views; pair p of a group is columns 2p, 2p + 1, pack_int4), with the prologue applied per pair
        # (PRO 1: x * g and the squares, 1 / rms at the end; 3: x * up); each group adds scale * sum((q - zp) x)
        W: tl.constexpr = GROUP // 8
        rows, row_ok, m, s, start, n_groups = _program_begin(w_ptr, w_stride, N, K, GROUP, BLOCK_N, GROUPS, SPLIT,
                                                             PDL, PREFETCH)
        g_in = tl.arange(0, GROUPS)
        j = tl.arange(0, W)
        acc = tl.zeros([BLOCK_N, GROUPS, W], dtype=tl.float32)
        squares = tl.zeros([1, GROUPS, W], dtype=tl.float32)
        for g0 in range(start, n_groups, GROUPS):
            g = g0 + g_in
            w, g_ok = _load_words(w_ptr, w_stride, rows, row_ok, g, n_groups, W)
            pairs = (g[:, None] * (4 * W) + j[None, :])[None, :, :]
            x_ok = g_ok[None, :, None]
            x0, r0 = _bf16_input(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, pairs, x_ok, PRO, ASM)
            x1, r1 = _bf16_input(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, pairs + W, x_ok, PRO, ASM)
            x2, r2 = _bf16_input(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, pairs + 2 * W, x_ok, PRO, ASM)
            x3, r3 = _bf16_input(x_ptr, up_ptr, g_ptr, m, x_stride, up_stride, pairs + 3 * W, x_ok, PRO, ASM)
            if PRO == 1:
                squares += _bf16_squares(r0, r1, r2, r3, ASM)
            at = (g[None, :] * N + rows[:, None]) * 2
            ok = row_ok[:, None] & g_ok[None, :]
            scale = tl.load(s_ptr + at, mask=ok, other=0.0).to(tl.float32)
            zp = tl.load(s_ptr + at + 1, mask=ok, other=0.0).to(tl.float32)
            acc += scale[:, :, None] * _bf16_dot(w, zp[:, :, None], x0, x1, x2, x3, ASM)
        finish_store(tl.sum(tl.sum(acc, axis=2), axis=1), tl.sum(tl.sum(squares, axis=2), axis=1), ws_ptr, sq_ptr,
                     cnt_ptr, s, m, K, eps, b_ptr, b_stride, r_ptr, lo_ptr, lb_ptr, out_ptr, N, rows, row_ok, silu_rows,
                     PRO, HAS_BIAS, HAS_RES, LORA_R, SPLIT)


def int4_pairs(x: torch.Tensor, group: int, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
               up: torch.Tensor | None = None, lora_a: torch.Tensor | None = None, activated: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``prologue(x [M, in])`` as the int4 pair GEMV reads it, on CUDA: (pairs int32 ``[M, in / 2]``, each group's sum
    float32 ``[M, in / group]``, the factor back ``[M]``, and with ``lora_a`` (A ``[R, in]``) LoRA's ``low =
    prologue(x) @ A^T`` float32 ``[M, R]``, else None); see :data:`_int4_pairs_kernel` and :func:`pairs_reference`."""
    return _launch_pairs(x, group, norm_weight, eps, up, lora_a, activated, low_only=False)


def int4_lora_low(x: torch.Tensor, group: int, lora_a: torch.Tensor, *, norm_weight: torch.Tensor | None = None,
                  eps: float = 1e-6, up: torch.Tensor | None = None, activated: bool = False) -> torch.Tensor:
    """LoRA's ``low = prologue(x) @ A^T`` float32 ``[M, R]`` on CUDA, one program per row and rank (the pairs kernel
    without its pairs), for the bf16 GEMV's LoRA epilogue."""
    low = _launch_pairs(x, group, norm_weight, eps, up, lora_a, activated, low_only=True)[3]
    assert low is not None
    return low


def _launch_pairs(x: torch.Tensor, group: int, norm_weight: torch.Tensor | None, eps: float, up: torch.Tensor | None,
                  lora_a: torch.Tensor | None, activated: bool, *, low_only: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x, up_, g, _, pro = fused_args(x, up, norm_weight, None, activated)
    rows, in_features = x.shape
    r = 0 if lora_a is None else lora_a.shape[0]
    factor = torch.empty(rows, dtype=torch.float32, device=x.device)
    if low_only:
        pairs = sums = factor  # not written
    else:
        pairs = torch.empty(rows, in_features // 2, dtype=torch.int32, device=x.device)
        sums = torch.empty(rows, in_features // group, dtype=torch.float32, device=x.device)
    a = lora_a.contiguous() if lora_a is not None else factor
    low = torch.empty(rows, r, dtype=torch.float32, device=x.device) if r else None
    block = triton.next_power_of_2(in_features // group)
    pdl = pdl_on(x)
    _int4_pairs_kernel[(rows, r if low_only else 1 + r)](
        x, x.stride(0), up_, up_.stride(0), g, pairs, sums, factor, a, low if low is not None else factor,
        in_features, float(eps), GROUP=group, PRO=pro, BLOCK_G=block, LORA_R=r, PDL=pdl, LOW_ONLY=int(low_only),
        num_warps=min(16, max(4, block * group // 512)), launch_pdl=pdl)
    return pairs, sums, factor, low


def pairs_reference(y: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What :func:`int4_pairs` makes of an already computed ``prologue(x)`` ``y [M, in]`` (float32), in torch."""
    rows, in_features = y.shape
    top = y.abs().amax(dim=1)
    factor = torch.where(top > 0, top / PAIR_TOP, torch.ones_like(top))
    half = (y / factor[:, None]).to(torch.float16).view(rows, in_features // 2, 2)  # [M, pair p, column of p]
    bits = half.view(torch.int16).to(torch.int32)
    pairs = (bits[..., 0] & 0xFFFF) | (bits[..., 1] << 16)
    return pairs, half.float().view(rows, in_features // group, group).sum(dim=2), factor


def int4_gemv(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group: int,
              bias: torch.Tensor | None, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
              up: torch.Tensor | None = None, residual: torch.Tensor | None = None,
              lora: tuple[torch.Tensor, torch.Tensor] | None = None,
              lora_ab: tuple[torch.Tensor, torch.Tensor] | None = None, activated: bool = False,
              silu_rows: int = 0) -> torch.Tensor:
    """``x [M, in] @ dequantized(packed).T + bias`` on CUDA, reading the 4-bit weights (not a dequantized copy); with
    the prologues / residual epilogue of :func:`rag.llm.fastgen.gemv.fused_gemv` and the LoRA epilogue (``lora``).
    :data:`INT4_DIRECT` on and x bf16 (prologue none, RMSNorm or ``x * up``): the bf16 GEMV that reads x itself;
    else :data:`INT4_PAIRS` on: the prologue once into fp16 pairs (:func:`int4_pairs`), then the pair GEMV; else the
    float32 kernel that applies it per weight. ``lora_ab``: see :meth:`QuantLinear.__call__`."""
    rows, out_features, in_features = x.shape[0], packed.shape[0], packed.shape[1] * 2
    words = packed.view(torch.int32)
    out = torch.empty(rows, out_features, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(out_features, meta["BLOCK_N"]), rows, meta["SPLIT"])  # noqa: E731
    ws, sq, cnt = split_buffers(x.device, rows, out_features)
    pdl = pdl_on(x)
    x_, up_, g, res, pro = fused_args(x, up, norm_weight, residual, activated)
    if INT4_DIRECT and pro != 2 and all(bf16_pairs_ok(t) for t in (x_, up_, g)):
        if lora_ab is not None:
            lora = (int4_lora_low(x, group, lora_ab[0], norm_weight=norm_weight, eps=eps, up=up, activated=activated),
                    lora_ab[1])
        low, lb, r = lora_args(x_, lora, out_features)
        xi, ui, gi = (t.view(torch.int32) for t in (x_, up_, g))
        _int4_bf16_gemv_kernel[grid](xi, xi.stride(0), ui, ui.stride(0), gi, words, words.stride(0), scales,
                                     bias if bias is not None else scales, addend_stride(bias), res, low, lb, out, ws,
                                     sq, cnt, out_features, in_features, float(eps), silu_rows, row_bucket(rows),
                                     GROUP=group, PRO=pro, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                                     LORA_R=r, ASM=use_asm(x), PDL=pdl, PREFETCH=gemv.PDL_PREFETCH if pdl else 0,
                                     launch_pdl=pdl)
        return out
    if INT4_PAIRS:
        pairs, sums, factor, low_ = int4_pairs(x, group, norm_weight=norm_weight, eps=eps, up=up,
                                               lora_a=lora_ab[0] if lora_ab is not None else None,
                                               activated=activated)
        low, lb, r = lora_args(x, (low_, lora_ab[1]) if lora_ab is not None and low_ is not None else lora,
                               out_features)
        _int4_pair_gemv_kernel[grid](pairs, sums, factor, words, words.stride(0), scales,
                                     bias if bias is not None else scales, addend_stride(bias), res, low, lb, out, ws,
                                     sq, cnt, out_features, in_features, silu_rows, row_bucket(rows), GROUP=group,
                                     HAS_BIAS=bias is not None, HAS_RES=residual is not None, LORA_R=r,
                                     ASM=use_asm(x), PDL=pdl, PREFETCH=gemv.PDL_PREFETCH if pdl else 0, launch_pdl=pdl)
        return out
    if lora_ab is not None:
        h = prologue(x, norm_weight=norm_weight, eps=eps, up=up, activated=activated)
        lora = (h @ lora_ab[0].float().t(), lora_ab[1])
    low, lb, r = lora_args(x_, lora, out_features)
    _int4_gemv_kernel[grid](x_, x_.stride(0), up_, up_.stride(0), g, words, words.stride(0), scales,
                            bias if bias is not None else scales, addend_stride(bias), res, low, lb, out, ws, sq, cnt,
                            out_features, in_features, float(eps), silu_rows, row_bucket(rows), GROUP=group, PRO=pro,
                            HAS_BIAS=bias is not None, HAS_RES=residual is not None, LORA_R=r, ASM=use_asm(x),
                            PDL=pdl, PREFETCH=gemv.PDL_PREFETCH if pdl else 0, launch_pdl=pdl)
    return out


def bf16_pairs_ok(t: torch.Tensor) -> bool:
    """Whether the direct int4 GEMV can read ``t`` (x, up or the norm weight; columns contiguous) as int32 pairs of
    bf16 columns: bf16, an even number of columns, rows and start at even elements."""
    return t.dtype == torch.bfloat16 and t.shape[-1] % 2 == 0 and t.storage_offset() % 2 == 0 and \
        (t.dim() == 1 or t.stride(0) % 2 == 0)


def int4_dequantize(packed: torch.Tensor, scales: torch.Tensor, group: int, dtype: torch.dtype) -> torch.Tensor:
    """The ``[out, in]`` weight in ``dtype`` on CUDA (prefill: a transient copy for one GEMM)."""
    out_features, in_features = packed.shape[0], packed.shape[1] * 2
    words = packed.view(torch.int32)
    out = torch.empty(out_features, in_features, dtype=dtype, device=packed.device)
    block_n = 32
    grid = (triton.cdiv(out_features, block_n), in_features // group)
    _int4_dequantize_kernel[grid](words, words.stride(0), scales, out, out_features, in_features, GROUP=group,
                                  BLOCK_N=block_n)
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
