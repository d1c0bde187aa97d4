"""``llm.quantization=int8|int4`` (rag.llm.hf.quantized): a chat model whose linears are served quantized by the fast
decoder, loaded without a bf16 copy on the GPU, cached, and still switching LoRA adapters per request; and the one
long-lived generation thread (rag.core.serial).

On CPU the fast decoder's ``eager`` step runs the same math as the CUDA graph (quantized linears dequantize there), so
these tests check the wiring and the cache (``quantized.load`` itself runs on any device; only
``HFChatModel.load`` insists on CUDA); the GPU kernels and speed are bench/decode_quant.py's.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import tinymodels
import torch

from rag.core.config import LLMConfig
from rag.core.errors import ConfigError
from rag.core.serial import SerialWorker
from rag.core.types import Message
from rag.llm.base import GenerationConfig
from rag.llm.fastgen.generator import FastGenerator
from rag.llm.fastgen.quant import from_portable, portable_tensors, quantize_linear, served_linears
from rag.llm.hf import quantized
from rag.llm.hf.fast import FastDecoder
from rag.llm.hf.model import HFChatModel

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft
PROMPTS = [[Message("user", text)] for text in ("磁盘空间不足怎么办？", "你好", "How do I connect to the VPN?")]


@pytest.fixture(scope="module")
def tiny_glm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinymodels.build_tiny_causal_lm(tmp_path_factory.mktemp("quant-glm"), "glm", "chatglm3", seed=2)


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HFChatModel, "_FAST_BACKEND", "eager")  # the decode step without a CUDA graph


def chat_of(folder: Path, cache: Path, kind: str = "int8") -> tuple[HFChatModel, str]:
    from transformers import AutoTokenizer

    model, quant, how = quantized.load(folder, kind, "cpu", torch.float32, cache)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return HFChatModel(model, tokenizer, model_id=str(folder), quantization=kind, quantized=quant,
                       fast_decode="auto"), how


def reference(folder: Path, chat: HFChatModel, messages: list[Message], kind: str, new_tokens: int) -> str:
    """The same prompt through a FastGenerator that quantizes a fresh copy of the model itself (nothing released)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    gen = FastGenerator(model, backend="eager", quantize=kind)
    ids = chat.encode_messages(messages)
    tokens = [t for chunk in gen.generate(ids, max_new_tokens=new_tokens, stop_ids=chat.stop_token_ids) for t in chunk]
    return str(chat.tokenizer.decode(tokens, skip_special_tokens=True))


def test_portable_form_round_trips_both_kinds() -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(64, 256), torch.randn(64)
    for kind in ("int8", "int4"):
        layer = quantize_linear(weight, bias, kind)
        back = from_portable(portable_tensors("x", layer), "x", "cpu")
        assert (back.kind, back.group, back.in_features, back.out_features) == (kind, layer.group, 256, 64)
        assert torch.equal(back.dequantize(), layer.dequantize()) and torch.equal(back.bias, bias)
    int4 = portable_tensors("x", quantize_linear(weight, None, "int4"))
    assert int4["x.qweight"].shape == (64, 128)  # two 4-bit values a byte on disk


def test_quantized_model_answers_like_the_quantized_decoder_and_frees_its_weights(tiny_glm: Path, tmp_path: Path,
                                                                                  eager: None) -> None:
    chat, how = chat_of(tiny_glm, tmp_path / "cache")
    assert how == "quantized"
    served = served_linears(chat.model)
    assert served and all(m.weight.numel() == 0 for m in served.values())  # the float weights are gone
    gen = GenerationConfig(max_new_tokens=10)
    for messages in PROMPTS:
        assert chat.generate(messages, gen) == reference(tiny_glm, chat, messages, "int8", 10)
    assert chat.info().extra["quantization"] == "int8" and chat.info().extra["fast_decode"].startswith("eager")
    with pytest.raises(ConfigError, match="repetition_penalty=1.2"):
        chat.generate(PROMPTS[0], GenerationConfig(max_new_tokens=4, repetition_penalty=1.2))


def test_second_start_reads_the_cache_and_answers_the_same(tiny_glm: Path, tmp_path: Path, eager: None,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    first, how = chat_of(tiny_glm, cache)
    files = list((cache / "quantized").glob("*.safetensors"))
    assert how == "quantized" and len(files) == 1 and not list((cache / "quantized").glob("*.partial"))
    second, how = chat_of(tiny_glm, cache)
    assert how == "cache"
    assert all(not t.is_meta for t in second.model.parameters())
    answers = [first.generate(m, GenerationConfig(max_new_tokens=10)) for m in PROMPTS]
    assert [second.generate(m, GenerationConfig(max_new_tokens=10)) for m in PROMPTS] == answers
    assert second.stop_token_ids == first.stop_token_ids  # the generation config came along
    files[0].write_bytes(b"not a safetensors file")  # damaged: reported, quantized again, answers unchanged
    with caplog.at_level(logging.WARNING):
        third, how = chat_of(tiny_glm, cache)
    assert how == "quantized" and "unusable" in caplog.text
    assert [third.generate(m, GenerationConfig(max_new_tokens=10)) for m in PROMPTS] == answers


def test_a_changed_checkpoint_gets_a_new_cache_entry(tiny_glm: Path, tmp_path: Path) -> None:
    before = quantized.cache_file(tiny_glm, "int4", tmp_path)
    assert before != quantized.cache_file(tiny_glm, "int8", tmp_path)
    weights = quantized.weight_files(tiny_glm)[0]
    stat = weights.stat()
    try:
        os.utime(weights, (stat.st_atime, stat.st_mtime + 10))
        assert quantized.cache_file(tiny_glm, "int4", tmp_path) != before
    finally:
        os.utime(weights, (stat.st_atime, stat.st_mtime))


def test_lora_adapters_switch_per_request_on_quantized_weights(tiny_glm: Path, tmp_path: Path, eager: None) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    chat, _ = chat_of(tiny_glm, tmp_path / "cache")
    base_answers = [chat.generate(m, GenerationConfig(max_new_tokens=8)) for m in PROMPTS]
    for name, seed, targets in (("all", 5, "all-linear"), ("qv", 6, ["q_proj", "v_proj"])):
        torch.manual_seed(seed)
        lora = LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM")
        get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_glm)), lora).save_pretrained(str(tmp_path / name))
        chat.load_adapter(name, tmp_path / name)
    gen = GenerationConfig(max_new_tokens=8)
    answers = {name: [chat.generate(m, gen, adapter=name) for m in PROMPTS] for name in ("all", None, "qv")}
    assert answers[None] == base_answers  # adapters off: the quantized base model's own answer
    assert answers["all"] != base_answers and answers["qv"] != base_answers  # each adapter is applied
    assert [chat.generate(PROMPTS[0], gen, adapter=n) for n in ("qv", "all", None)] == [
        answers["qv"][0], answers["all"][0], answers[None][0]]


def test_settings_that_cannot_work_fail_before_loading(tiny_glm: Path) -> None:
    with pytest.raises(ConfigError, match="llm.quantization=int4 is served by the fast GPU decoder.*cpu"):
        HFChatModel.load(LLMConfig(model=str(tiny_glm), device="cpu", quantization="int4"))
    with pytest.raises(ConfigError, match="is not one of '', int8, int4, nf4"):
        HFChatModel.load(LLMConfig(model=str(tiny_glm), device="cpu", quantization="int3"))
    with pytest.raises(ConfigError, match="fast_decode=off cannot be combined"):
        FastDecoder("off", model_id="x", context_window=64, tokenizer=None, quantize="int8", quantized={})


def test_serial_worker_runs_jobs_in_order_on_one_thread_and_survives_a_failing_job() -> None:
    worker = SerialWorker("test-worker")
    seen: list[tuple[int, Any]] = []

    def job(i: int) -> None:
        seen.append((i, threading.current_thread()))
        if i == 1:
            raise RuntimeError("boom")

    events = [worker.submit(lambda i=i: job(i)) for i in range(4)]
    assert all(e.wait(10) for e in events)
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    assert len({t for _, t in seen}) == 1 and seen[0][1] is not threading.current_thread()
    assert not worker.is_current()
    inside: list[bool] = []
    assert worker.submit(lambda: inside.append(worker.is_current())).wait(10) and inside == [True]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_int4_and_int8_load_on_the_gpu_and_answer_like_the_quantized_decoder(tmp_path: Path) -> None:
    """The CUDA path: the Triton int4 / int8 GEMVs inside the graph, the cache written and read."""
    from transformers import GlmConfig, GlmForCausalLM

    tokenizer = tinymodels.build_tokenizer(tmp_path, "chatglm3")
    stops = tinymodels.get_template("chatglm3").stop_token_ids(tokenizer)
    torch.manual_seed(4)
    config = GlmConfig(vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=128, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       max_position_embeddings=512, initializer_range=0.2, eos_token_id=stops,
                       pad_token_id=tokenizer.pad_token_id, partial_rotary_factor=0.5, attention_bias=True)
    model = GlmForCausalLM(config)  # hidden 128: the smallest width whose linears int4 holds (group 128)
    model.generation_config.eos_token_id = stops
    folder = tmp_path / "glm128"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for kind in ("int4", "int8"):
        cfg = LLMConfig(model=str(folder), device="cuda", dtype="bfloat16", quantization=kind,
                        cache_dir=str(tmp_path / "cache"), max_new_tokens=12, context_window=512)
        first, second = HFChatModel.load(cfg), HFChatModel.load(cfg)
        assert "quantized now" in first.origin and "from the cache" in second.origin
        assert first.info().extra["fast_decode"] == "auto"  # built by the first request
        reference_model = GlmForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).cuda()
        gen = FastGenerator(reference_model, max_len=512, quantize=kind)
        assert gen.backend == "graph" and ("int4" in {q.kind for q in gen._quant.values()}) == (kind == "int4")
        for messages in PROMPTS:
            ids = first.encode_messages(messages)
            tokens = [t for c in gen.generate(ids, max_new_tokens=12, stop_ids=first.stop_token_ids) for t in c]
            want = first.tokenizer.decode(tokens, skip_special_tokens=True)
            assert first.generate(messages) == second.generate(messages) == want
        assert first.info().extra["fast_decode"].startswith("graph")
