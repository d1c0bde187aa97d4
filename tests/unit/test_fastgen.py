"""rag.llm.fastgen.generator: the static-cache decode step (eager on CPU, CUDA graph on GPU) against ``model.generate``.

Tiny random GLM / Llama models (hidden 64, 2 layers) are built here. ``initializer_range=0.5`` keeps the logits far
apart, so greedy tokens do not flip on rounding differences between the two paths.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rag.llm.fastgen.attention import HAS_TRITON, decode_attention, sdpa_decode
from rag.llm.fastgen.generator import FastGenerator

VOCAB = 128


def tiny_model(kind: str, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0) -> Any:
    from transformers import GlmConfig, GlmForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    common = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
              "initializer_range": 0.5, "pad_token_id": 0, "eos_token_id": None}  # no eos: generate runs to the end
    if kind == "glm":
        model = GlmForCausalLM(GlmConfig(**common, partial_rotary_factor=0.5, attention_bias=True))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    return model.to(device=device, dtype=dtype).eval()


def naive_greedy(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def collect(chunks: Any) -> list[int]:
    return [t for chunk in chunks for t in chunk]


PROMPT = [5, 17, 33, 8, 99, 64, 3, 120, 41]


@pytest.mark.parametrize("kind", ["glm", "llama"])
def test_eager_step_matches_generate(kind: str) -> None:
    model = tiny_model(kind)
    fast = FastGenerator(model, max_batch=2, max_len=64, backend="eager", chunk_tokens=4)
    assert fast.attention == "sdpa"  # no Triton on CPU
    assert fast._fusable is (kind == "glm")  # Llama's separate gate and up take the general walk
    expected = naive_greedy(model, PROMPT, 20)
    assert collect(fast.generate(PROMPT, max_new_tokens=20)) == expected
    assert collect(fast.generate(PROMPT, max_new_tokens=20)) == expected  # the cache is reused, not appended to


@pytest.mark.parametrize("fuse", [True, False])
def test_eager_logits_match_full_forward(fuse: bool) -> None:
    model = tiny_model("glm")
    fast = FastGenerator(model, max_len=64, backend="eager", chunk_tokens=1, fuse_gemv=fuse)
    assert fast._fusable is fuse  # GLM (joined gate/up, SiLU, RMSNorm) takes the fused GEMV walk when asked
    steps = []
    for chunk in fast.generate(PROMPT, max_new_tokens=6):
        steps.append((chunk[0], fast.logits[0].clone()))
    tokens = PROMPT + [t for t, _ in steps]
    with torch.no_grad():
        ref = model(torch.tensor([tokens])).logits[0].float()
    # the logits read after chunk j predicted token j, i.e. they are the forward's logits at position len(PROMPT)-1+j
    for j, (_, logits) in enumerate(steps):
        assert torch.allclose(logits, ref[len(PROMPT) - 1 + j], atol=1e-4), j


def test_batch_rows_of_different_lengths_match_single_rows() -> None:
    model = tiny_model("llama", seed=1)
    prompts = [PROMPT, PROMPT[:4], [7] * 13]
    fast = FastGenerator(model, max_batch=3, max_len=64, backend="eager", chunk_tokens=5)
    rows: list[list[int]] = [[], [], []]
    for chunk in fast.generate_batch(prompts, max_new_tokens=12):
        for row, tokens in enumerate(chunk):
            rows[row] += tokens
    assert rows == [naive_greedy(model, p, 12) for p in prompts]


@pytest.mark.parametrize("backend", ["hf", "eager"])
def test_stop_tokens_end_generation_and_are_not_yielded(backend: str) -> None:
    model = tiny_model("glm")
    free = naive_greedy(model, PROMPT, 16)
    stop = free[6]
    first = free.index(stop)
    fast = FastGenerator(model, max_len=64, backend=backend, chunk_tokens=4)
    assert collect(fast.generate(PROMPT, max_new_tokens=16, stop_ids=[stop])) == free[:first]


def test_cpu_auto_backend_is_generate_and_streams_in_chunks() -> None:
    model = tiny_model("glm")
    fast = FastGenerator(model, backend="auto", chunk_tokens=4)
    assert fast.backend == "hf"
    chunks = list(fast.generate(torch.tensor([PROMPT]), max_new_tokens=10))
    assert [len(c) for c in chunks] == [1, 4, 4, 1]
    assert collect(chunks) == naive_greedy(model, PROMPT, 10)


def test_sampling_stays_in_top_p_head() -> None:
    model = tiny_model("glm")
    fast = FastGenerator(model, max_len=64, backend="eager", chunk_tokens=8)
    torch.manual_seed(0)
    tokens = collect(fast.generate(PROMPT, max_new_tokens=16, temperature=1.0, top_p=1e-6))
    assert tokens == naive_greedy(model, PROMPT, 16)  # top_p -> 0 keeps only the argmax


def test_errors_name_the_limit() -> None:
    model = tiny_model("glm")
    fast = FastGenerator(model, max_batch=1, max_len=256, backend="eager")
    with pytest.raises(ValueError, match="exceeds max_len=256"):
        list(fast.generate(list(range(1, 100)), max_new_tokens=200))
    with pytest.raises(ValueError, match="takes 1 to max_batch=1"):
        list(fast.generate_batch([PROMPT, PROMPT], max_new_tokens=2))
    with pytest.raises(ValueError, match="backend='gpu' is not one of"):
        FastGenerator(model, backend="gpu")


def test_lora_fused_path_matches_peft_forward() -> None:
    peft = pytest.importorskip("peft")
    model = tiny_model("glm")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.3)  # B starts at zero: make the adapter change the output
    lora.eval()
    fast = FastGenerator(lora, max_len=64, backend="eager", chunk_tokens=4)
    expected = naive_greedy(lora, PROMPT, 12)
    with lora.disable_adapter():
        base = naive_greedy(lora, PROMPT, 12)
        assert collect(fast.generate(PROMPT, max_new_tokens=12)) == base
    assert expected != base
    assert collect(fast.generate(PROMPT, max_new_tokens=12)) == expected
    assert any(v is not None for v in fast._lora.values())  # the fused path ran, not peft's forward


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["glm", "llama"])
def test_graph_greedy_matches_generate_on_gpu(kind: str) -> None:
    model = tiny_model(kind, device="cuda")
    fast = FastGenerator(model, max_batch=2, max_len=512, backend="graph", chunk_tokens=8)
    expected = naive_greedy(model, PROMPT, 40)
    assert collect(fast.generate(PROMPT, max_new_tokens=40)) == expected
    assert collect(fast.generate(PROMPT, max_new_tokens=40)) == expected  # replaying the captured graph
    rows: list[list[int]] = [[], []]
    for chunk in fast.generate_batch([PROMPT, PROMPT[:3]], max_new_tokens=20):
        rows[0] += chunk[0]
        rows[1] += chunk[1]
    assert rows == [expected[:20], naive_greedy(model, PROMPT[:3], 20)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_decode_attention_matches_sdpa_on_gpu() -> None:

    if not HAS_TRITON:
        pytest.skip("no triton")
    for heads, kv_heads, dim in [(32, 2, 128), (28, 4, 128), (8, 8, 64)]:
        q = torch.randn(3, heads, dim, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(3, kv_heads, 1024, dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        pos = torch.tensor([0, 300, 1023], device="cuda")
        got = decode_attention(q, k, v, pos, dim**-0.5).float()
        ref = sdpa_decode(q.float(), k.float(), v.float(), pos, dim**-0.5)
        assert (got - ref).abs().max() < 2e-2


@pytest.mark.parametrize("kind", ["glm", "llama"])
def test_rotary_as_pairs_of_dimensions_matches_the_models_own(kind: str) -> None:
    """The decode attention's rotary (attention.FUSED_ROPE): the model's rope found to be a rotation of pairs of
    dimensions (GLM: interleaved pairs on half the head; Llama: the two halves), its per-step tables applied as
    ``x[d] c[d] + x[p[d]] s[d]`` equal to the model's own rope at other positions; a rotary that mixes more than two
    dimensions is not taken for one."""
    import sys

    from rag.llm.fastgen.ops import rope_partners, rope_tables, rotate_pairs

    model = tiny_model(kind)
    rope = sys.modules[type(model.model.layers[0].self_attn).__module__].apply_rotary_pos_emb
    partners = rope_partners(rope, model.model.rotary_emb, 16, torch.device("cpu"))
    assert partners is not None
    want_pairs = [1, 0, 3, 2, 5, 4, 7, 6, *range(8, 16)] if kind == "glm" else [*range(8, 16), *range(8)]
    assert partners.tolist() == want_pairs
    x = torch.randn(3, 4, 1, 16)
    positions = torch.tensor([[0], [77], [511]])
    cos, sin = model.model.rotary_emb(x[:, 0], positions)
    c, s = rope_tables(rope, cos, sin, partners)
    got = rotate_pairs(x[:, :, 0], c, s, partners)
    torch.testing.assert_close(got, rope(x, x, cos, sin)[0][:, :, 0], rtol=1e-5, atol=1e-5)

    def mixing(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = rope(q, k, cos, sin)
        return out[0] + 0.5 * out[0].roll(3, dims=-1), out[1]  # three dimensions feed each output

    assert rope_partners(mixing, model.model.rotary_emb, 16, torch.device("cpu")) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["glm", "llama"])
def test_gpu_fused_rotary_decode_matches_the_rotary_op(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Graph decode (bf16, the fused GEMV walk and the Triton attention) with the rotary and cache writes in the
    attention kernel (attention.FUSED_ROPE) against the model's rotary as its own op: the same greedy tokens and
    logits within bf16 rounding (the fused rotary multiplies in float32, the op in bf16), for 2 rows of different
    lengths, across a 256-position split."""
    from rag.llm.fastgen import attention

    model = tiny_model(kind, dtype=torch.bfloat16, device="cuda")
    gen = FastGenerator(model, max_batch=2, max_len=512, backend="graph", chunk_tokens=8)
    assert gen.attention == "triton" and gen._partners is not None
    prompts = [PROMPT * 30, PROMPT[:3]]  # 270 and 3 tokens: the first row's new k crosses into a second split

    def run() -> tuple[list[list[int]], torch.Tensor]:
        rows: list[list[int]] = [[], []]
        logits = []
        for chunk in gen.generate_batch(prompts, max_new_tokens=24):
            rows[0] += chunk[0]
            rows[1] += chunk[1]
            logits.append(gen.logits[:2].clone())
        return rows, torch.stack(logits)

    monkeypatch.setattr(attention, "FUSED_ROPE", True)
    fused, fused_logits = run()
    monkeypatch.setattr(attention, "FUSED_ROPE", False)
    gen.reset()
    op, op_logits = run()
    assert fused == op
    assert float((fused_logits - op_logits).norm() / op_logits.norm()) < 2e-2


def test_fused_gemv_formula_matches_the_modules() -> None:
    """The fused GEMV's formula (its CPU path) against the unfused modules, in float32."""
    from rag.llm.fastgen.gemv import fused_gemv
    from rag.llm.fastgen.ops import rms_norm

    torch.manual_seed(3)
    x, up, res = torch.randn(3, 48), torch.randn(3, 48), torch.randn(3, 20)
    w, g, bias = torch.randn(20, 48), torch.rand(48) + 0.5, torch.randn(20)
    torch.testing.assert_close(fused_gemv(x, w, norm_weight=g, eps=1e-5, bias=bias, residual=res),
                               rms_norm(x, g, 1e-5) @ w.t() + bias + res, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_gemv(x, w, up=up), (torch.nn.functional.silu(x) * up) @ w.t(),
                               rtol=1e-5, atol=1e-5)
    # the SiLU moved into the gate/up GEMV's epilogue (gemv.SILU_EPILOGUE): SiLU of the first rows as they are
    # stored, then down's prologue multiplies by up only
    joined = fused_gemv(x, w, norm_weight=g, eps=1e-5, silu_rows=8)
    plain = rms_norm(x, g, 1e-5) @ w.t()
    torch.testing.assert_close(joined, torch.cat([torch.nn.functional.silu(plain[:, :8]), plain[:, 8:]], dim=1),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_gemv(torch.nn.functional.silu(x), w, up=up, activated=True, residual=res),
                               fused_gemv(x, w, up=up, residual=res), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        fused_gemv(x, w, norm_weight=g, up=up)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_gemv_kernel_matches_formula_on_gpu() -> None:
    """The Triton kernel against the float32 formula on ChatGLM3-like widths (K not a multiple of the block: 13,696),
    1 and 3 rows, x and up as column slices of one tensor (the joined gate/up output). bf16 output: relative error
    of the rounding, ~2^-8."""
    from rag.llm.fastgen.gemv import HAS_TRITON, fused_gemv, reference

    if not HAS_TRITON:
        pytest.skip("no triton")
    torch.manual_seed(4)
    for n, k in ((4608, 4096), (4096, 13696), (200, 96)):
        w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
        for rows in (1, 3):
            both = torch.randn(rows, 2 * k, device="cuda").bfloat16()
            x, up = both[:, :k], both[:, k:]
            g = (torch.rand(k, device="cuda") + 0.5).bfloat16()
            res, bias = torch.randn(rows, n, device="cuda").bfloat16(), torch.randn(n, device="cuda").bfloat16()
            for kw in ({}, {"norm_weight": g, "eps": 1e-5, "bias": bias, "residual": res}, {"up": up},
                       {"up": up, "activated": True, "residual": res},
                       {"norm_weight": g, "eps": 1e-5, "silu_rows": n // 2}):
                got, ref = fused_gemv(x, w, **kw).float(), reference(x, w, **kw).float()
                assert ((got - ref).norm() / ref.norm()).item() < 1e-2, (n, k, rows, kw.keys())
