"""Weight-only int8 / int4 decoding (rag.llm.fastgen.quant) on CPU: the quantization itself, and that the fast
decoder's step uses the quantized weights for every linear (it must equal the same model with the dequantized
weights put back), with LoRA adapters still switchable. The GPU kernels are checked by bench/decode_quant.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from rag.llm.fastgen.generator import FastGenerator
from rag.llm.fastgen.quant import (
    PAIR_TOP,
    int4_group_for,
    int4_prologue_once,
    pack_int4,
    pairs_reference,
    quantize_int4,
    quantize_int8,
    quantize_linear,
    unpack_int4,
)

PROMPT = [5, 17, 33, 8, 99, 64, 3, 120, 41]


def small_glm(seed: int = 0) -> Any:
    """hidden 128 / ffn 256: the smallest shape whose linears int4 (group 128, K a multiple of 128) can hold."""
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(seed)
    config = GlmConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                       initializer_range=0.2, pad_token_id=0, eos_token_id=None, partial_rotary_factor=0.5,
                       attention_bias=True)
    return GlmForCausalLM(config).eval()


def step_logits(gen: FastGenerator, steps: int = 6) -> torch.Tensor:
    gen.chunk_tokens = 1
    out = []
    for _ in gen.generate(PROMPT, max_new_tokens=steps):
        out.append(gen.logits[0].clone())
    return torch.stack(out)


def test_round_trip_error_is_at_most_half_a_step() -> None:
    torch.manual_seed(1)
    weight = torch.randn(64, 256)
    q8, scale = quantize_int8(weight)
    assert q8.dtype == torch.int8 and int(q8.abs().max()) == 127  # each row's largest weight maps to ±127
    err8 = ((q8.float() * scale[:, None]) - weight).abs()
    assert bool((err8 <= scale[:, None] / 2 * (1 + 1e-5)).all())  # round to nearest: half a step at most
    # int4: an integer zero point per group, the range widened to hold 0, so shifted and all-positive groups too
    weight[0, :128] = weight[0, :128].abs() + 3.0
    weight[1, 128:] = -weight[1, 128:].abs() - 3.0
    q4, scales_zp = quantize_int4(weight, 128)
    assert q4.dtype == torch.uint8 and int(q4.max()) == 15 and int(q4.min()) == 0
    scale4, zp4 = scales_zp.permute(1, 0, 2).unbind(-1)  # [out, groups]
    assert torch.equal(zp4, zp4.round()) and float(zp4.min()) == 0 and float(zp4.max()) == 15
    deq4 = (q4.float().view(64, 2, 128) - zp4[..., None]) * scale4[..., None]
    assert bool(((deq4 - weight.view(64, 2, 128)).abs() <= scale4[..., None] / 2 * (1 + 1e-4) + 1e-6).all())
    layer = quantize_linear(weight, None, "int4")
    assert torch.equal(layer.dequantize(), deq4.view(64, 256))


def test_int4_takes_widths_a_group_size_divides() -> None:
    assert int4_group_for(4096, 13696 * 2) == 128
    assert int4_group_for(13696, 4096) == 128  # ChatGLM3-6B's down_proj: 107 groups
    assert int4_group_for(4000, 4096) == 32  # the largest group size (128, 64, 32) that divides the width
    assert quantize_linear(torch.randn(16, 64), None, "int4").group == 64
    assert quantize_linear(torch.randn(16, 100), None, "int4").kind == "int8"  # no group size divides 100
    with pytest.raises(ValueError, match="quantize='int3' is not one of int8, int4"):
        quantize_linear(torch.randn(16, 64), None, "int3")


def dequantized_copy(model: Any, gen: FastGenerator) -> Any:
    """The model with every weight the generator quantized replaced by what the quantized numbers stand for."""
    twin = copy.deepcopy(model)
    by_id = {id(m): m for m in model.modules()}
    twin_modules = dict(twin.named_modules())
    for name, module in model.named_modules():
        if id(module) in gen._quant:
            assert by_id[id(module)] is module
            twin_modules[name].weight.data = gen._quant[id(module)].dequantize(module.weight.dtype)
    return twin


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_every_linear_of_the_step_reads_the_quantized_weights(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.llm.fastgen import quant

    model = small_glm()
    gen = FastGenerator(model, max_len=64, backend="eager", quantize=kind, fuse_gemv=True)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert len(gen._quant) == n_linear  # 2 layers x (q, k, v, o, gate_up, down) + lm_head
    kinds = {q.kind for q in gen._quant.values()}
    assert kinds == ({"int8"} if kind == "int8" else {"int4", "int8"})  # int4 blocks, int8 output layer
    twin = FastGenerator(dequantized_copy(model, gen), max_len=64, backend="eager")
    assert gen._fusable and twin._fusable  # the fused GEMV walk, quantized and not
    got, want = step_logits(gen), step_logits(twin)
    # float32 on both sides; only the order of the same products differs (F.linear on the same numbers)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    default = FastGenerator(model, max_len=64, backend="eager", quantize=kind)
    # by default both take the fused walk (int8: with its split-K GEMVs; int4: with the bf16 or fp16-pair GEMV, whose
    # prologue runs once per pair or launch; through the float32 int4 GEMV the fused walk was slower)
    assert default._fusable
    monkeypatch.setattr(quant, "INT4_PAIRS", False)
    monkeypatch.setattr(quant, "INT4_DIRECT", False)
    assert FastGenerator(model, max_len=64, backend="eager", quantize=kind)._fusable == (kind == "int8")
    general = step_logits(FastGenerator(model, max_len=64, backend="eager", quantize=kind, fuse_gemv=False))
    assert torch.allclose(got, general, rtol=1e-4, atol=1e-4 * float(general.abs().max()))  # fused == general walk


def test_int8_logits_stay_close_to_the_native_model() -> None:
    model = small_glm()
    native = step_logits(FastGenerator(model, max_len=64, backend="eager"), steps=1)[0]
    quant = step_logits(FastGenerator(model, max_len=64, backend="eager", quantize="int8"), steps=1)[0]
    # half a step of 1/127 of each row's largest weight, through 2 layers: about 1 % of the logits' norm here
    assert float((quant - native).norm() / native.norm()) < 0.05


def test_lora_stays_switchable_on_quantized_weights() -> None:
    peft = pytest.importorskip("peft")
    model = small_glm()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.3)
    lora.eval()
    gen = FastGenerator(lora, max_len=64, backend="eager", quantize="int8")
    with_adapter = step_logits(gen, steps=1)[0]
    with lora.disable_adapter():
        without = step_logits(gen, steps=1)[0]
        native_without = step_logits(FastGenerator(lora, max_len=64, backend="eager"), steps=1)[0]
    native_with = step_logits(FastGenerator(lora, max_len=64, backend="eager"), steps=1)[0]
    assert float((with_adapter - without).norm() / without.norm()) > 0.1  # the adapter changes the answer
    for got, want in ((with_adapter, native_with), (without, native_without)):
        assert float((got - want).norm() / want.norm()) < 0.05  # and the quantized base stays close in both states


def lora_glm(r: int = 4) -> Any:
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(small_glm(), peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"))
    for name, param in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.3)  # B starts at zero: make the adapter change the output
    return lora.eval()


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_lora_epilogue_formula(kind: str) -> None:
    """``QuantLinear(x, lora=(low, b))`` (the GEMVs' LoRA epilogue; here its CPU formula) is ``x @ W_deq^T + bias +
    (x @ A^T) @ B^T`` with A and B zero-padded to a power of two (ops.pad_lora), for decode and prefill row counts,
    B as a block of rows of a taller matrix (one linear of a group), and with the fused RMSNorm prologue."""
    from rag.llm.fastgen.ops import lora_low, lora_low_mm, pad_lora, rms_norm

    torch.manual_seed(5)
    layer = quantize_linear(torch.randn(72, 256), torch.randn(72), kind)
    assert layer.kind == kind
    w = layer.dequantize()
    a, b_all = torch.randn(12, 256), torch.randn(80, 12)  # r 12 -> R 16; this layer's B is rows 8..80
    a_pad, b_pad = pad_lora(a, b_all)
    assert a_pad.shape == (16, 256) and b_pad.shape == (80, 16)
    b = b_pad[8:]
    for rows in (1, 3, 40):
        x = torch.randn(rows, 256)
        low = lora_low_mm(x, a_pad)
        torch.testing.assert_close(lora_low(x, a_pad), low, rtol=1e-5, atol=1e-4)
        want = x @ w.t() + layer.bias + (x @ a.t()) @ b_all[8:].t()
        torch.testing.assert_close(layer(x, lora=(low, b)), want, rtol=1e-5, atol=1e-4)
        g = torch.rand(256) + 0.5
        normed = rms_norm(x, g, 1e-5)
        want = normed @ w.t() + layer.bias + low @ b.t()
        torch.testing.assert_close(layer(x, lora=(low, b), norm_weight=g, eps=1e-5), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_lora_decode_on_quantized_weights_equals_the_dequantized_model(kind: str) -> None:
    """Greedy decode with an unmerged adapter on the quantized path (decode rows: ``x @ A^T``, then B in the GEMVs'
    epilogue) equals the same adapter over the dequantized weights through the unquantized path (float32; only the
    order of the same products differs), and the addend path it replaced (``lora_epilogue`` off)."""
    lora = lora_glm()
    gen = FastGenerator(lora, max_len=64, backend="eager", quantize=kind)
    twin = FastGenerator(dequantized_copy(lora, gen), max_len=64, backend="eager")
    got, want = step_logits(gen), step_logits(twin)
    assert gen._lora_pad and all(a.shape[0] in (8, 16) for a, _ in gen._lora_pad.values())  # the epilogue path ran
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    gen.lora_epilogue = False
    gen.reset()
    addend = step_logits(gen)
    assert not gen._lora_pad
    assert torch.allclose(got, addend, rtol=1e-4, atol=1e-4 * float(addend.abs().max()))
    with lora.disable_adapter():
        without = step_logits(gen)
    assert float((got - without).norm() / without.norm()) > 0.1  # the adapter changes the answer


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_fused_walk_with_lora_on_quantized_weights_equals_the_general_walk(kind: str) -> None:
    """``lora_fused_walk``: decode steps with an adapter on take the fused GEMV walk (LoRA's ``x @ A^T`` from the
    prologue's output, B in the epilogue) and give the general walk's logits (float32; the order of the same products
    differs); with the switch off, or an adapter state it cannot join, the general walk runs."""
    lora = lora_glm()
    gen = FastGenerator(lora, max_len=64, backend="eager", quantize=kind)
    gen.lora_fused_walk = False
    want = step_logits(gen)
    assert not gen._lora_walk  # switched off: the general walk ran
    gen.lora_fused_walk = None  # the default: on for int4 through the pair GEMV, off for int8
    gen.reset()
    step_logits(gen)
    assert list(gen._lora_walk.values()) == ([True] if kind == "int4" and int4_prologue_once() else [])
    gen.lora_fused_walk = True
    gen.reset()
    got = step_logits(gen)
    assert list(gen._lora_walk.values()) == [True]  # the fused walk ran, with the adapter
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    with lora.disable_adapter():
        without = step_logits(gen)
    assert float((got - without).norm() / without.norm()) > 0.1  # the adapter is applied on the fused walk


def test_released_weights_free_memory_and_change_nothing() -> None:
    model = small_glm()
    kept = step_logits(FastGenerator(copy.deepcopy(model), max_len=64, backend="eager", quantize="int8"))
    gen = FastGenerator(model, max_len=64, backend="eager", quantize="int8", release_weights=True)
    assert all(m.weight.numel() == 0 for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert torch.equal(step_logits(gen), kept)


def test_quantize_errors_say_what_to_change() -> None:
    model = small_glm()
    with pytest.raises(ValueError, match="quantize='int3' is not one of int8, int4"):
        FastGenerator(model, backend="eager", quantize="int3")
    with pytest.raises(ValueError, match="needs fuse_lora=True"):
        FastGenerator(model, backend="eager", quantize="int8", fuse_lora=False)
    with pytest.raises(ValueError, match="not backend='hf'"):
        FastGenerator(model, backend="hf", quantize="int8")


def test_int4_is_stored_two_values_a_byte_interleaved_per_word() -> None:
    q = torch.randint(0, 16, (8, 256), dtype=torch.uint8)
    for group in (128, 64, 32):
        packed = pack_int4(q, group)
        assert packed.shape == (8, 128) and packed.dtype == torch.uint8 and torch.equal(unpack_int4(packed, group), q)
    packed = pack_int4(q, 128)
    words = packed.view(torch.int32)  # little-endian 32-bit words, 16 per group of 128 columns
    for j in (0, 5, 15):
        for k in range(4):  # nibbles k and k + 4 of word j: columns 2 (16 k + j) and 2 (16 k + j) + 1 of the group
            for h in range(2):
                assert (int(words[3, 16 + j]) >> (4 * k + 16 * h)) & 15 == int(q[3, 128 + 2 * (16 * k + j) + h])


def test_gemv_float_of_bits_is_exact() -> None:
    """The int4 GEMV's conversion without an int-to-float instruction (quant._float_of_field), in torch: nibble i of
    a word, shifted into the mantissa of 16.0 and or-ed in (the lop3's (t & 0x780000) ^ 0x41800000), is 16 + q."""
    q4 = torch.arange(16, dtype=torch.int32)
    for i in range(8):
        word = q4 << (4 * i)
        shifted = word << (19 - 4 * i) if i <= 4 else word >> (4 * i - 19)
        assert torch.equal(((shifted & 0x780000) ^ 0x41800000).view(torch.float32), 16.0 + q4.float())


def test_fp16_pair_constants_and_layout_give_the_dot_product() -> None:
    """The int4 pair GEMV's arithmetic in torch (quant._PAIR_DOT): nibbles k and k + 4 of a word or-ed into the
    mantissas of the fp16 pair 0x6400 (1024) are 1024 + q exactly, minus 0x6408 (1032) is q - 8; with x' in
    pairs_reference's layout (scaled to PAIR_TOP, group sums for the zeros) the words' sums rebuild x @ w.T within
    fp16 rounding of x' and of four-product sums (relative ~1e-3)."""
    q = torch.arange(16, dtype=torch.int16)
    assert torch.equal((q | 0x6400).view(torch.float16).float(), 1024 + q.float())
    assert torch.tensor([0x6408], dtype=torch.int16).view(torch.float16).item() == 1032.0
    torch.manual_seed(0)
    for out_features, in_features, group in ((24, 384, 128), (16, 96, 32)):
        layer = quantize_linear(torch.randn(out_features, in_features), None, "int4", group=group)
        x = torch.randn(2, in_features) * 50
        pairs, sums, factor = pairs_reference(x, group)
        assert float((pairs.view(torch.int16).view(torch.float16).float().abs().amax(dim=1) - PAIR_TOP).abs().max()) == 0
        words = layer.qweight.view(torch.int32).view(out_features, in_features // group, group // 8)  # [out, g, j]
        xp = pairs.view(2, in_features // group, 4, group // 8)  # [M, g, k, j]
        x_lo = (xp & 0xFFFF).to(torch.int16).view(torch.float16).float()
        x_hi = (xp >> 16).to(torch.int16).view(torch.float16).float()
        dot = torch.zeros(2, out_features, in_features // group)
        for k in range(4):
            q_lo = ((words >> (4 * k)) & 15).float() - 8
            q_hi = ((words >> (4 * k + 16)) & 15).float() - 8
            dot += (q_lo[None] * x_lo[:, None, :, k] + q_hi[None] * x_hi[:, None, :, k]).sum(-1)
        scale, zp = layer.scales.float().permute(1, 0, 2).unbind(-1)  # [out, g]
        got = ((dot * scale[None]).sum(-1) + sums @ ((8 - zp) * scale).t()) * factor[:, None]
        want = x @ layer.dequantize().t()
        assert float((got - want).norm() / want.norm()) < 2e-3, (out_features, in_features, group)


def bf16_halves(pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 bf16 pairs -> (low, high) float32, as the kernel's ``_bf16_halves`` (a shift and a mask)."""
    return (pairs << 16).view(torch.float32), (pairs & -65536).view(torch.float32)


def test_bf16_pair_constants_and_layout_give_the_dot_product() -> None:
    """The direct int4 GEMV's arithmetic in torch (quant._BF16_DOT): nibbles k and k + 4 of a word or-ed into the
    mantissas of the bf16 pair 0x4300 (128) are 128 + q exactly, plus the bf16 -(128 + zp) (0xC300 + zp) is q - zp
    exactly; x's own bf16 pairs (adjacent columns, read from memory as int32) meet them, so the words' sums times each
    group's scale rebuild x @ w.T (float32 here, so exact up to the order of the sums)."""
    q = torch.arange(16, dtype=torch.int32)
    low, high = bf16_halves((q << 16) | q | 0x43004300)
    assert torch.equal(low, 128 + q.float()) and torch.equal(high, 128 + q.float())
    for zp in (0, 7, 15):
        bits = torch.tensor([0xC300 + zp], dtype=torch.int32)
        assert bf16_halves(bits)[0].item() == -(128.0 + zp)
    torch.manual_seed(0)
    for out_features, in_features, group in ((24, 384, 128), (16, 96, 32)):
        layer = quantize_linear(torch.randn(out_features, in_features), None, "int4", group=group)
        x = torch.randn(2, in_features).to(torch.bfloat16)
        words = layer.qweight.view(torch.int32).view(out_features, in_features // group, group // 8)  # [out, g, j]
        xp = x.view(torch.int32).view(2, in_features // group, 4, group // 8)  # [M, g, k, j]: pair k W + j
        x_lo, x_hi = bf16_halves(xp)
        scale, zp = layer.scales.float().permute(1, 0, 2).unbind(-1)  # [out, g]
        dot = torch.zeros(2, out_features, in_features // group)
        for k in range(4):
            q_lo = ((words >> (4 * k)) & 15).float() - zp[..., None]
            q_hi = ((words >> (4 * k + 16)) & 15).float() - zp[..., None]
            dot += (q_lo[None] * x_lo[:, None, :, k] + q_hi[None] * x_hi[:, None, :, k]).sum(-1)
        got = (dot * scale[None]).sum(-1)
        want = x.float() @ layer.dequantize().t()
        assert float((got - want).norm() / want.norm()) < 1e-5, (out_features, in_features, group)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["int8", "int4", "int4-pairs", "int4-f32"])
def test_gpu_kernels_compute_what_the_quantized_numbers_stand_for(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton GEMVs (decode rows; int4 through the bf16 kernel, the fp16-pair one and the float32 one) and the int4
    dequantizing kernel (prefill) against ``x @ dequantize().T`` in float32, on widths that are no multiple of any
    block size; bf16 inputs and outputs: ~0.3 % relative error."""
    from rag.llm.fastgen import quant

    monkeypatch.setattr(quant, "INT4_DIRECT", kind == "int4")
    monkeypatch.setattr(quant, "INT4_PAIRS", kind != "int4-f32")
    kind = kind[:4]
    torch.manual_seed(0)
    for out_features, in_features, group in ((4100, 13696, 128), (300, 4096, 64), (72, 96, 32)):
        weight = torch.randn(out_features, in_features, device="cuda", dtype=torch.bfloat16)
        bias = torch.randn(out_features, device="cuda", dtype=torch.bfloat16)
        layer = quantize_linear(weight, bias, kind, group=group)
        assert layer.kind == kind
        reference = layer.dequantize(torch.float32)
        for rows in (1, 3, 16, 40):  # GEMV up to 16 rows, then the dequantizing path
            x = torch.randn(rows, in_features, device="cuda", dtype=torch.bfloat16)
            want = x.float() @ reference.t() + bias.float()
            got = layer(x).float()
            assert float((got - want).norm() / want.norm()) < 1e-2, (out_features, in_features, rows)
            # a per-row addend instead of the bias (a fused LoRA delta, here a column slice of a wider tensor)
            wide = torch.randn(rows, out_features + 8, device="cuda", dtype=torch.bfloat16)
            addend = wide[:, 8:]
            want = x.float() @ reference.t() + addend.float()
            got = layer(x, add=addend).float()
            assert float((got - want).norm() / want.norm()) < 1e-2, (out_features, in_features, rows, "add")
            # the LoRA epilogue: bias + low @ b.T, b a block of rows of a taller zero-padded B (R 8 and 16)
            for r in (8 if rows == 1 else 16,):
                low = torch.randn(rows, r, device="cuda")
                b = torch.randn(out_features + 8, r, device="cuda") * 0.1
                want = x.float() @ reference.t() + bias.float() + low @ b[8:].t()
                got = layer(x, lora=(low, b[8:])).float()
                assert float((got - want).norm() / want.norm()) < 1e-2, (out_features, in_features, rows, "lora", r)
                # lora_ab: low = prologue(x) @ A^T made by the call (int4 pairs: in the pairs kernel), here RMSNorm
                a = torch.randn(r, in_features, device="cuda") * 0.05
                g = torch.rand(in_features, device="cuda", dtype=torch.bfloat16) + 0.5
                xf = x.float()
                normed = g.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)
                want = normed @ reference.t() + bias.float() + (normed @ a.t()) @ b[8:].t()
                got = layer(x, norm_weight=g, eps=1e-5, lora_ab=(a, b[8:])).float()
                assert float((got - want).norm() / want.norm()) < 1e-2, (out_features, in_features, rows, "lora_ab")
            # the fused decode step's prologues (RMSNorm / silu gate, x and up as slices of one tensor) + residual
            both = torch.randn(rows, 2 * in_features, device="cuda", dtype=torch.bfloat16)
            g = torch.rand(in_features, device="cuda", dtype=torch.bfloat16) + 0.5
            res = torch.randn(rows, out_features, device="cuda", dtype=torch.bfloat16)
            xs, up = both[:, :in_features].float(), both[:, in_features:].float()
            normed = g.float() * xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + 1e-5)
            for kw, inp in (({"norm_weight": g, "eps": 1e-5, "residual": res}, normed),
                            ({"up": both[:, in_features:], "residual": res}, torch.nn.functional.silu(xs) * up),
                            ({"up": both[:, in_features:], "activated": True, "residual": res}, xs * up)):
                want = inp @ reference.t() + bias.float() + res.float()
                got = layer(both[:, :in_features], **kw).float()
                assert float((got - want).norm() / want.norm()) < 1e-2, (out_features, in_features, rows, kw.keys())
            # SiLU of the first half of the outputs as they are stored (the joined gate/up GEMV of the fused walk)
            half = out_features // 2
            plain = normed @ reference.t() + bias.float()
            want = torch.cat([torch.nn.functional.silu(plain[:, :half]), plain[:, half:]], dim=1)
            got = layer(both[:, :in_features], norm_weight=g, eps=1e-5, silu_rows=half).float()
            assert float((got - want).norm() / want.norm()) < 1e-2, (out_features, in_features, rows, "silu_rows")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_gpu_lora_epilogue_decode_matches_the_addend_path(kind: str) -> None:
    """Graph decode (bf16, the Triton GEMVs) with an unmerged adapter: B in the GEMVs' epilogue against the addend path
    it replaced (``lora_epilogue`` off), logits of prefill and decode steps within bf16 rounding."""
    lora = lora_glm().to(device="cuda", dtype=torch.bfloat16)
    gen = FastGenerator(lora, max_len=64, backend="graph", quantize=kind)
    got = step_logits(gen, steps=4)
    assert gen._lora_pad
    gen.lora_epilogue = False
    gen.reset()
    want = step_logits(gen, steps=4)
    assert float((got - want).norm() / want.norm()) < 2e-2
    gen.lora_epilogue, gen.lora_fused_walk = True, True  # the fused walk with the adapter on (int4: low in pairs)
    gen.reset()
    fused = step_logits(gen, steps=4)
    assert any(gen._lora_walk.values())
    assert float((fused - want).norm() / want.norm()) < 2e-2


def test_pdl_switch_is_off_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Programmatic dependent launch (gemv.PDL) is asked for only on CUDA tensors with Triton: CPU tensors never take
    it, whatever the switch, and the switched-off module takes no launch path that needs it."""
    from rag.llm.fastgen import gemv

    x = torch.zeros(1, 8)
    for flag in (True, False):
        monkeypatch.setattr(gemv, "PDL", flag)
        assert gemv.pdl_on(x) is False
    monkeypatch.setattr(gemv, "PDL", False)
    if torch.cuda.is_available():
        assert gemv.pdl_on(x.cuda()) is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["", "int8", "int4"])
def test_gpu_pdl_changes_no_number(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Graph decode through the fused GEMV walk (GEMV after GEMV, the decode attention) with programmatic dependent
    launch (gemv.PDL) off and on: the same kernels with the same block shapes, so the same logits bit for bit (a
    missing wait would read a half-written input and show here). Below compute capability 9 both take plain
    launches."""
    from rag.llm.fastgen import gemv

    model = small_glm().to(device="cuda", dtype=torch.bfloat16)
    gen = FastGenerator(model, max_len=256, backend="graph", quantize=kind, fuse_gemv=True)
    monkeypatch.setattr(gemv, "PDL", False)
    want = step_logits(gen, steps=8)
    monkeypatch.setattr(gemv, "PDL", True)
    gen.reset()
    got = step_logits(gen, steps=8)
    assert torch.equal(got, want)
    if torch.cuda.get_device_capability()[0] >= 9:
        assert gemv.pdl_on(got)


def gpu_inputs(rows: int, n: int, k: int) -> tuple[torch.Tensor, ...]:
    """A GEMV case on the GPU: (x and up side by side [rows, 2k] bf16, x and up in float32, an RMSNorm weight, a
    residual [rows, n], LoRA's low [rows, 8] and B [n, 8], RMSNorm(x) in float32)."""
    both = torch.randn(rows, 2 * k, device="cuda", dtype=torch.bfloat16)
    xs, up = both[:, :k].float(), both[:, k:].float()
    g = torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5
    res = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
    low, b = torch.randn(rows, 8, device="cuda"), torch.randn(n, 8, device="cuda") * 0.1
    normed = g.float() * xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + 1e-5)
    return both, xs, up, g, res, low, b, normed


def check_eager_and_replayed(layer: Any, x: torch.Tensor, kw: dict[str, Any], want: torch.Tensor,
                             case: tuple[Any, ...]) -> None:
    """``layer(x, **kw)`` within 1 % of ``want`` (bf16 in and out), and the same numbers bit for bit when captured in
    a CUDA graph and replayed twice (split-K counters and buffers reset themselves)."""
    got = layer(x, **kw).float()
    assert float((got - want).norm() / want.norm()) < 1e-2, (*case, kw.keys())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer(x, **kw)
    for _ in range(2):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out.float(), got), (*case, kw.keys())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("split", [2, 4])
def test_gpu_int8_split_k_gemv(split: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 GEMV with its K split over ``split`` programs (forced: one configuration, so the autotuner cannot pick
    an unsplit one) against ``x @ dequantize().T`` with each prologue, the residual and the LoRA epilogue, eagerly
    and replayed in a CUDA graph (the arrival counters reset themselves), with and without PDL."""
    import triton

    from rag.llm.fastgen import gemv

    forced = triton.autotune(configs=[triton.Config({"BLOCK_N": 8, "BLOCK_K": 512, "SPLIT": split}, num_warps=4,
                                                    num_stages=3)],
                             key=["N", "K", "ROW_BUCKET", "PRO", "HAS_SCALE", "INT8_BITS"])(gemv._gemv)
    monkeypatch.setattr(gemv, "gemv_split_kernel", forced)
    monkeypatch.setattr(gemv, "INT8_SPLIT", True)
    torch.manual_seed(1)
    for n, k in ((4100, 13696), (72, 1000)):
        layer = quantize_linear(torch.randn(n, k, device="cuda", dtype=torch.bfloat16),
                                torch.randn(n, device="cuda", dtype=torch.bfloat16), "int8")
        reference = layer.dequantize(torch.float32)
        for rows in (1, 3):
            both, xs, up, g, res, low, b, normed = gpu_inputs(rows, n, k)
            cases = (({}, xs, 0), ({"norm_weight": g, "eps": 1e-5, "residual": res}, normed, res.float()),
                     ({"up": both[:, k:], "lora": (low, b)}, torch.nn.functional.silu(xs) * up, low @ b.t()))
            for pdl in (False, True):
                monkeypatch.setattr(gemv, "PDL", pdl)
                for kw, inp, extra in cases:
                    want = inp @ reference.t() + layer.bias.float() + extra  # type: ignore[union-attr]
                    check_eager_and_replayed(layer, both[:, :k], kw, want, (n, k, rows, pdl))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("config", [(16, 8, 4, 2, 1), (16, 4, 4, 3, 4)])
def test_gpu_int4_bf16_gemv_forced_configs(config: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """The int4 GEMV that reads bf16 x itself (quant.INT4_DIRECT; packed bf16 arithmetic in inline PTX) with one
    configuration forced (whole K / split-K, so the autotuner picks neither for it) against ``x @ dequantize().T`` with each of its prologues (none, RMSNorm, ``x * up``), the residual,
    SiLU of the first outputs, and the LoRA epilogue with ``low`` given or made by the low-only pairs kernel; also
    replayed in a CUDA graph (the split-K counters reset themselves). bf16 products and four-term sums: ~0.4 %."""
    import triton

    from rag.llm.fastgen import quant

    n_rows, groups, warps, stages, split = config
    forced = triton.autotune(configs=[triton.Config({"BLOCK_N": n_rows, "GROUPS": groups, "SPLIT": split},
                                                    num_warps=warps, num_stages=stages)],
                             key=["N", "K", "ROW_BUCKET", "GROUP", "PRO"])(quant._int4_bf16_gemv_kernel.fn)
    monkeypatch.setattr(quant, "_int4_bf16_gemv_kernel", forced)
    monkeypatch.setattr(quant, "INT4_DIRECT", True)
    torch.manual_seed(2)
    for n, k, group in ((4100, 4096, 128), (72, 1024, 64)):
        layer = quantize_linear(torch.randn(n, k, device="cuda", dtype=torch.bfloat16),
                                torch.randn(n, device="cuda", dtype=torch.bfloat16), "int4", group=group)
        reference = layer.dequantize(torch.float32)
        for rows in (1, 3):
            both, xs, up, g, res, low, b, normed = gpu_inputs(rows, n, k)
            a = torch.randn(8, k, device="cuda") * 0.05
            cases = (({}, xs, 0, 0), ({"norm_weight": g, "eps": 1e-5, "residual": res}, normed, res.float(), 0),
                     ({"up": both[:, k:], "activated": True, "lora": (low, b)}, xs * up, low @ b.t(), 0),
                     ({"norm_weight": g, "eps": 1e-5, "silu_rows": n // 2}, normed, 0, n // 2),
                     ({"norm_weight": g, "eps": 1e-5, "lora_ab": (a, b)}, normed, (normed @ a.t()) @ b.t(), 0))
            for kw, inp, extra, act in cases:
                want = inp @ reference.t() + layer.bias.float() + extra  # type: ignore[union-attr]
                if act:
                    want = torch.cat([torch.nn.functional.silu(want[:, :act]), want[:, act:]], dim=1)
                check_eager_and_replayed(layer, both[:, :k], kw, want, (n, k, rows))
