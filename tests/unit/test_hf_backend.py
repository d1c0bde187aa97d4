"""rag.llm.hf.model: streaming from tiny random Llama / Qwen2 / GLM models built here, the FIFO generation queue, LoRA
adapters switched per request, and the errors (prompt too long, out of memory, bad settings).

The models are random (hidden 64, 2 layers; tests/tinymodels.py) with a byte-level BPE tokenizer trained at test
time, so their text is gibberish (often U+FFFD): tests compare outputs with each other and with ``model.generate``,
never with expected words. The ChatGLM3 test goes through the real conversion (rag.llm.glm.convert) of a tiny checkpoint
in ChatGLM3's own layout, and a finetune_demo-style LoRA on its fused query_key_value.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import tinymodels
import torch

from rag.core.config import LLMConfig
from rag.core.device import is_oom, pick_device, pick_dtype
from rag.core.errors import ConfigError, ModelUnavailableError, RagError
from rag.core.types import Message
from rag.llm.base import GenerationConfig
from rag.llm.hf import load as hf_load
from rag.llm.hf.load import GPUOutOfMemoryError, quantization_config, remote_code_allowed
from rag.llm.hf.model import HFChatModel, PromptTooLongError
from rag.models.ids import canonical_model_id

LINES = [
    "服务器磁盘空间不足时，先用 df -h 查看各分区的使用率。",
    "打印机驱动安装步骤：先从厂商网站下载驱动程序，然后添加打印机。",
    "年假需提前三个工作日在 OA 系统中申请。",
    "To connect to the office VPN, install the WireGuard client.",
]
ARCH_TEMPLATE = {"llama": "chatml", "qwen2": "chatml", "glm": "chatglm3"}
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft
QUESTION = [Message("system", "你是知识库助手。"), Message("user", "磁盘空间不足怎么办？")]


def build_tiny_chat_model(folder: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A random causal LM of ``arch`` (llama | qwen2 | glm) with its chat template (tests/tinymodels.py)."""
    return tinymodels.build_tiny_causal_lm(folder, arch, ARCH_TEMPLATE[arch], seed=seed)


def make_lora_adapter(base_folder: Path, out: Path, seed: int, targets: Any = ("q_proj", "v_proj")) -> Path:
    """A peft LoRA adapter (default on q/v) with random, non-zero B (so it changes the output), saved as safetensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_folder)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=targets if isinstance(targets, str) else list(targets),
                      init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(str(out))
    assert (out / "adapter_model.safetensors").is_file()
    return out


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-llms")


@pytest.fixture(scope="module")
def tiny_llama(models_dir: Path) -> Path:
    return build_tiny_chat_model(models_dir / "llama", "llama")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KBQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "cache"


def load(folder: Path, **overrides: Any) -> HFChatModel:
    return HFChatModel.load(LLMConfig(model=str(folder), device="cpu", max_new_tokens=12, **overrides))


@pytest.fixture(scope="module")
def chat(tiny_llama: Path) -> HFChatModel:
    return load(tiny_llama)


def reference_ids(chat: HFChatModel, messages: list[Message], max_new_tokens: int) -> list[int]:
    """What plain greedy ``model.generate`` produces for the same prompt: the oracle for streaming."""
    ids = torch.tensor([chat.encode_messages(messages)])
    with torch.inference_mode():
        out = chat.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=max_new_tokens, eos_token_id=chat.stop_token_ids,
                                  pad_token_id=chat.tokenizer.pad_token_id)
    return [int(i) for i in out[0, ids.shape[1]:]]


def talkative(chat: HFChatModel) -> list[Message]:
    """The first of a few prompts that this random model answers with >= 4 tokens before any stop token: the shared
    tiny builders change, and an answer that stops at once would make the assertions below vacuous."""
    candidates = [QUESTION] + [[Message("user", line)] for line in LINES] + [[Message("user", "你好")]]
    for messages in candidates:
        if len(reference_ids(chat, messages, 4)) == 4:
            return messages
    pytest.fail("every candidate prompt stops at once on this tiny model; change its seed")


# --- streaming ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "glm"])
def test_streams_the_greedy_answer_in_pieces(models_dir: Path, arch: str) -> None:
    folder = build_tiny_chat_model(models_dir / f"stream-{arch}", arch)
    chat = load(folder)
    prompt = talkative(chat)
    pieces = list(chat.stream(prompt))
    assert pieces and all(isinstance(p, str) and p for p in pieces)
    expected = chat.tokenizer.decode(reference_ids(chat, prompt, 12), skip_special_tokens=True)
    assert "".join(pieces) == expected
    info = chat.info()
    assert (info.backend, info.dtype, info.device, info.adapters) == ("hf", "float32", "cpu", ())
    assert info.template == ARCH_TEMPLATE[arch] and info.model_id == str(folder)
    assert info.extra["origin"] == f"local folder {folder}"
    assert chat.context_window == 512  # min(llm.context_window 8192, max_position_embeddings 512)


def test_template_stop_tokens_are_stop_ids(models_dir: Path) -> None:
    chat = load(build_tiny_chat_model(models_dir / "stops-glm", "glm"))
    vocab = chat.tokenizer.get_vocab()
    assert set(chat.stop_token_ids) == {vocab["</s>"], vocab["<|user|>"], vocab["<|observation|>"]}


def test_generation_stops_at_a_stop_token(chat: HFChatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = talkative(chat)
    free = reference_ids(chat, prompt, 12)
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])  # first new token after the second
    monkeypatch.setattr(chat, "stop_token_ids", [free[k]])
    text = "".join(chat.stream(prompt))
    assert text == chat.tokenizer.decode(free[: k + 1], skip_special_tokens=True)  # a plain token is still shown
    assert text != chat.tokenizer.decode(free, skip_special_tokens=True)


def test_greedy_is_deterministic_and_seeded_sampling_repeats(chat: HFChatModel) -> None:
    prompt = talkative(chat)
    assert chat.generate(prompt) == chat.generate(prompt) != ""
    sampled = GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=1.0, seed=7)
    assert chat.generate(prompt, sampled) == chat.generate(prompt, sampled)


def test_count_tokens_uses_the_tokenizer(chat: HFChatModel) -> None:
    assert chat.count_tokens("服务器磁盘空间不足") == len(chat.tokenizer.encode("服务器磁盘空间不足",
                                                                                 add_special_tokens=False)) > 0
    assert chat.count_tokens("") == 0


# --- one generation at a time, first come first served -----------------------------------------------------------


def test_concurrent_calls_are_serialised_and_match_sequential(chat: HFChatModel,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = [[Message("user", line)] for line in LINES]
    sequential = [chat.generate(p) for p in prompts]
    active, peak, lock = [0], [0], threading.Lock()
    real_generate = chat.model.generate

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)  # widen the window in which an unserialised second call would overlap
            return real_generate(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(chat.model, "generate", counting_generate)
    results: list[str] = [""] * len(prompts)

    def worker(i: int) -> None:
        results[i] = "".join(chat.stream(prompts[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == sequential
    assert peak[0] == 1


def test_waiting_requests_run_in_arrival_order(chat: HFChatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    generating, resume = threading.Event(), threading.Event()
    generate = chat.model.generate
    prompt = talkative(chat)  # before the patch: talkative calls model.generate itself, which would hold the test

    def held_generate(*args: Any, **kwargs: Any) -> Any:  # the first request keeps the model until resumed
        if not generating.is_set():
            generating.set()
            resume.wait(60)
        return generate(*args, **kwargs)

    monkeypatch.setattr(chat.model, "generate", held_generate)
    first: Any = chat.stream(prompt)  # a generator: close() cancels it
    threading.Thread(target=lambda: next(first), daemon=True).start()
    assert generating.wait(30)
    order: list[int] = []

    def worker(i: int) -> None:
        for _ in chat.stream([Message("user", LINES[i])]):
            pass
        order.append(i)

    threads = []
    for i in range(3):
        threads.append(threading.Thread(target=worker, args=(i,)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while chat.queue_depth() != i + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert chat.queue_depth() == i + 1
    assert order == []  # nobody ran while the first request holds the model
    resume.set()
    for t in threads:
        t.join(timeout=60)
    assert order == [0, 1, 2] and chat.queue_depth() == 0
    first.close()


def test_a_dropped_stream_that_nobody_closes_frees_the_model(chat: HFChatModel) -> None:
    """A client that hangs up mid-answer leaves its generator suspended and uncollected (issue 17 #1: the served API
    then waited forever for the model): the generation thread hands the model on when it ends."""
    abandoned: Any = chat.stream(talkative(chat))
    next(abandoned)  # suspended mid-answer and still referenced: never closed, never collected
    done: list[str] = []
    waiter = threading.Thread(target=lambda: done.append(chat.generate([Message("user", LINES[0])])), daemon=True)
    waiter.start()
    waiter.join(timeout=60)
    assert done and isinstance(done[0], str), "the next request still waits for the abandoned one"
    assert chat.queue_depth() == 0
    abandoned.close()


def test_closing_a_stream_on_its_own_generation_thread_does_not_join_itself(chat: HFChatModel,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The garbage collector may finalise an abandoned generator on any thread, the generation thread included."""
    stream: Any = None
    errors: list[BaseException] = []
    suspended = threading.Event()
    run_generate = chat._run_generate

    def close_from_worker(*args: Any) -> None:
        args[3].put(torch.tensor([chat.encode_messages([Message("user", "x")])]))  # the prompt, skipped
        args[3].put(torch.tensor(chat.tokenizer.encode("你好", add_special_tokens=False)))
        args[3].end()
        suspended.wait(30)
        try:
            stream.close()
        except BaseException as exc:  # before the fix: RuntimeError("cannot join current thread")
            errors.append(exc)

    monkeypatch.setattr(chat, "_run_generate", close_from_worker)
    stream = chat.stream([Message("user", LINES[0])])
    assert next(stream)
    suspended.set()
    deadline = time.monotonic() + 30
    while chat._turns.busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert errors == [] and chat._turns.busy() == 0
    monkeypatch.setattr(chat, "_run_generate", run_generate)
    assert isinstance(chat.generate([Message("user", LINES[1])]), str)


# --- adapters ------------------------------------------------------------------------------------------------------


def test_two_adapters_switch_per_request_and_base_stays_available(models_dir: Path) -> None:
    base_folder = build_tiny_chat_model(models_dir / "adapters-base", "llama", seed=1)
    chat = load(base_folder)
    prompt = talkative(chat)
    before = chat.generate(prompt)
    chat.load_adapter("a", make_lora_adapter(base_folder, models_dir / "lora-a", seed=11))
    chat.load_adapter("b", make_lora_adapter(base_folder, models_dir / "lora-b", seed=22))
    assert chat.adapters == ("a", "b") and chat.info().adapters == ("a", "b")
    with_a = chat.generate(prompt, adapter="a")
    after = chat.generate(prompt)  # adapter=None: adapters disabled
    with_b = chat.generate(prompt, adapter="b")
    assert with_a != before and with_b != with_a and with_b != before
    assert after == before and chat.generate(prompt, adapter="a") == with_a

    # concurrent requests with different adapters never mix
    plan = ["a", None, "b", "a", None, "b"]
    expected = {"a": with_a, None: before, "b": with_b}
    results: list[str] = [""] * len(plan)

    def worker(i: int) -> None:
        results[i] = chat.generate(prompt, adapter=plan[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(plan))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [expected[name] for name in plan]

    with pytest.raises(RagError, match=r"^adapter 'c' is not loaded \(loaded: a, b\); see rag.models.adapters.list_adapters$"):
        chat.stream(QUESTION, adapter="c")
    with pytest.raises(RagError, match=r"^adapter 'a' is already loaded"):
        chat.load_adapter("a", models_dir / "lora-a")


def test_load_adapter_reads_safetensors_only(chat: HFChatModel, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(RagError, match=r"adapter 'x': .*adapter_model.safetensors not found \(only safetensors"):
        chat.load_adapter("x", tmp_path)


# --- errors ----------------------------------------------------------------------------------------------------------


def test_prompt_longer_than_the_window_is_refused_at_once(tiny_llama: Path) -> None:
    chat = load(tiny_llama, context_window=40)
    n = len(chat.encode_messages(QUESTION))
    with pytest.raises(PromptTooLongError) as info:
        chat.stream(QUESTION, GenerationConfig(max_new_tokens=64))
    assert str(info.value) == (
        f"the prompt takes {n} tokens and the answer up to max_new_tokens=64, more than the model's context window "
        "of 40 tokens; shorten the history or the retrieved context (answer.history_tokens, answer.context_tokens) "
        "or lower llm.max_new_tokens"
    )


def test_out_of_memory_becomes_one_clear_error_and_frees_the_model(chat: HFChatModel,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def oom(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    prompt = talkative(chat)
    good = chat.generate(prompt)
    with monkeypatch.context() as patch:
        patch.setattr(chat.model, "generate", oom)
        with pytest.raises(GPUOutOfMemoryError, match=r"^the GPU ran out of memory while answering \(prompt \d+ "
                           r"tokens, max_new_tokens 12\); its cache was freed\. .*llm.quantization=int4$"):
            list(chat.stream(prompt))
    assert chat.generate(prompt) == good != "" and chat.queue_depth() == 0


@pytest.mark.parametrize("message", ["CUDA out of memory. Tried to allocate 2.00 GiB",
                                     "CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                                     "Expected mha_graph.execute(handle, variant_pack, workspace_ptr.get()).is_good()"])
def test_memory_failures_are_recognised(message: str) -> None:
    assert is_oom(RuntimeError(message)) and is_oom(torch.OutOfMemoryError(message))
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


def test_out_of_memory_while_loading_names_the_fix(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def oom(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", oom)
    with pytest.raises(GPUOutOfMemoryError) as info:
        load(tiny_llama)
    assert str(info.value) == (f"not enough memory on cpu to load {tiny_llama} in float32; free the GPU, or set "
                               "llm.quantization=int4 (about a third of the memory)")


def test_other_generation_errors_pass_through(chat: HFChatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("bad generation config")

    monkeypatch.setattr(chat.model, "generate", broken)
    with pytest.raises(ValueError, match="bad generation config"):
        list(chat.stream(QUESTION))


def test_missing_model_offline_fails_fast_with_the_fix(offline: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as info:
        HFChatModel.load(LLMConfig(model="nobody/no-llm", modelscope_id="nobody/no-llm", device="cpu"))
    assert time.perf_counter() - started < 5
    assert str(info.value) == (
        "language model nobody/no-llm not found: no local folder, not in caches, ModelScope: offline "
        "(HF_HUB_OFFLINE=1), Hugging Face: offline (HF_HUB_OFFLINE=1). Put the model in a folder and set "
        "llm.model=/path, or download it with `python -m rag.models download nobody/no-llm`."
    )


def test_remote_code_only_for_a_pinned_local_folder(tiny_llama: Path) -> None:
    message = (r"^llm.trust_remote_code=true runs Python code shipped with the model; it is allowed only for a local "
               r"folder \(llm.model=/path/to/model\) with llm.revision set")
    with pytest.raises(ConfigError, match=message):
        remote_code_allowed(LLMConfig(model="THUDM/chatglm3-6b", revision="abc", trust_remote_code=True))
    with pytest.raises(ConfigError, match=message):
        remote_code_allowed(LLMConfig(model=str(tiny_llama), trust_remote_code=True))
    assert remote_code_allowed(LLMConfig(model=str(tiny_llama), revision="abc", trust_remote_code=True))
    assert not remote_code_allowed(LLMConfig(model="THUDM/chatglm3-6b"))


def test_auto_dtype_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # V100
    assert pick_dtype("auto", "cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # A100
    assert pick_dtype("auto", "cuda:0") == torch.bfloat16
    assert pick_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ConfigError, match=r"^llm.dtype='fp8' is not one of auto, bfloat16, float16, float32$"):
        pick_dtype("fp8", "cpu")


def test_quantization_needs_bitsandbytes_and_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert quantization_config("", "cpu", torch.float32) is None
    with pytest.raises(ConfigError, match=r"^llm.quantization='3bit' is not one of '', int8, int4, nf4, 4bit, 8bit$"):
        quantization_config("3bit", "cuda", torch.float16)
    monkeypatch.setattr(hf_load.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"^llm.quantization=4bit needs bitsandbytes: pip install bitsandbytes"):
        quantization_config("4bit", "cuda", torch.float16)
    monkeypatch.setattr(hf_load.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ConfigError, match=r"^llm.quantization=8bit needs a CUDA GPU, but the model runs on cpu"):
        quantization_config("8bit", "cpu", torch.float32)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^llm.device=cuda but torch sees no CUDA GPU; use llm.device=auto"):
            pick_device("cuda")


def test_found_in_our_cache_by_hub_id(tiny_llama: Path, offline: Path) -> None:
    import shutil

    shutil.copytree(tiny_llama, offline / "someorg--tiny-chat")
    chat = HFChatModel.load(LLMConfig(model="someorg/tiny-chat", device="cpu", max_new_tokens=4))
    assert chat.info().extra["origin"] == f"cache {offline / 'someorg--tiny-chat'}"
    assert canonical_model_id(str(offline / "someorg--tiny-chat")) == "someorg/tiny-chat"


# --- the fast decoder (llm.fast_decode, rag.llm.fastgen.generator) --------------------------------------------------------
# On CPU, FastGenerator's own backend is "hf" (model.generate in chunks); "eager" runs its static-cache decode step
# (the CUDA graph's body, fused LoRA included) without a graph. Both must stream what fast_decode=off streams.

FAST_BACKENDS = ["hf", "eager"]


def built_once(folder: Path, arch: str, seed: int = 0) -> Path:
    """``build_tiny_chat_model`` into ``folder`` unless an earlier parametrisation built it."""
    built = folder / f"tiny-{arch}"
    return built if built.is_dir() else build_tiny_chat_model(folder, arch, seed=seed)


@pytest.fixture
def fast_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(HFChatModel, "_FAST_BACKEND", request.param)
    return str(request.param)


@pytest.mark.parametrize("fast_backend", FAST_BACKENDS, indirect=True)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "glm"])
def test_fast_decode_streams_the_same_pieces_as_generate(models_dir: Path, arch: str, fast_backend: str) -> None:
    folder = built_once(models_dir / f"fast-{arch}", arch)
    off, on = load(folder, fast_decode="off"), load(folder, fast_decode="on")
    assert off.info().extra["fast_decode"] == "off" and on.info().extra["fast_decode"] == "on"  # not built yet
    prompt = talkative(off)
    expected = list(off.stream(prompt))
    assert list(on.stream(prompt)) == expected and "".join(expected)
    assert on.info().extra["fast_decode"].startswith(fast_backend)  # it really ran
    short = GenerationConfig(max_new_tokens=3)
    assert on.generate(prompt, short) == off.generate(prompt, short) != "".join(expected)
    # sampling with top_p -> 0 keeps only the most likely token: greedy again, through the sampling graph
    nucleus = GenerationConfig(max_new_tokens=12, temperature=0.7, top_p=1e-6, seed=3)
    assert on.generate(prompt, nucleus) == "".join(expected)
    sampled = GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=1.0, seed=7)
    assert on.generate(prompt, sampled) == on.generate(prompt, sampled)  # seeded: repeatable


@pytest.mark.parametrize("fast_backend", FAST_BACKENDS, indirect=True)
def test_fast_decode_stops_like_generate(chat: HFChatModel, tiny_llama: Path, fast_backend: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    on = load(tiny_llama, fast_decode="on")
    prompt = talkative(chat)
    free = reference_ids(chat, prompt, 12)
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    for model in (chat, on):  # a plain token as the stop token: generate shows it, then stops
        monkeypatch.setattr(model, "stop_token_ids", [free[k]])
    assert "".join(on.stream(prompt)) == "".join(chat.stream(prompt)) == chat.tokenizer.decode(
        free[: k + 1], skip_special_tokens=True)
    silent = chat.tokenizer.eos_token_id  # a stop token without text is dropped by the fast decoder: same text
    for model in (chat, on):
        monkeypatch.setattr(model, "stop_token_ids", [silent, free[k]])
    assert "".join(on.stream(prompt)) == "".join(chat.stream(prompt))


@pytest.mark.parametrize("fast_backend", FAST_BACKENDS, indirect=True)
def test_fast_decode_follows_the_adapter_of_each_request(models_dir: Path, fast_backend: str) -> None:
    base_folder = built_once(models_dir / "fast-adapters", "llama", seed=1)
    off, on = load(base_folder, fast_decode="off"), load(base_folder, fast_decode="on")
    prompt = talkative(off)
    assert on.generate(prompt) == off.generate(prompt)  # the fast decoder is built before any adapter loads ...
    built = on._decoder.generator
    for name, seed, targets in (("a", 11, "all-linear"), ("b", 22, ("q_proj", "v_proj"))):
        folder = models_dir / f"fast-lora-{name}"
        if not folder.is_dir():
            make_lora_adapter(base_folder, folder, seed=seed, targets=targets)
        off.load_adapter(name, folder)
        on.load_adapter(name, folder)
    assert on._decoder.generator is None and built is not None  # ... and rebuilt after: the model and its layers changed
    answers = {name: off.generate(prompt, adapter=name) for name in ("a", None, "b")}
    assert len(set(answers.values())) == 3  # the adapters change the answer
    plan = ["a", None, "b", "a", None, "b"]
    assert [on.generate(prompt, adapter=name) for name in plan] == [answers[name] for name in plan]
    if fast_backend == "eager":  # adapter a (every linear) ran fused; b (q and v, not k) through peft's forward
        assert any(fused is not None for fused in on._decoder.generator._lora.values())
        assert any(fused is None for fused in on._decoder.generator._lora.values())
    results: list[str] = [""] * len(plan)

    def worker(i: int) -> None:
        results[i] = on.generate(prompt, adapter=plan[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(plan))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [answers[name] for name in plan]  # queued requests with different adapters never mix


def test_closing_the_stream_stops_the_fast_decoder(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.llm.fastgen.generator import FastGenerator

    monkeypatch.setattr(HFChatModel, "_FAST_BACKEND", "eager")
    on = load(tiny_llama, fast_decode="on")
    monkeypatch.setattr(on, "stop_token_ids", [])  # nothing stops it but max_new_tokens or the caller
    prompt = talkative(on)
    chunks: list[int] = []
    real = FastGenerator.generate_batch

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        for chunk in real(self, *args, **kwargs):
            chunks.append(len(chunk[0]))
            yield chunk

    monkeypatch.setattr(FastGenerator, "generate_batch", counting)
    long = GenerationConfig(max_new_tokens=400)
    first = on.stream(prompt, long)
    assert next(first)
    waiting = threading.Thread(target=lambda: chunks.append(-len(on.generate(prompt))))
    waiting.start()
    deadline = time.monotonic() + 10
    while on.queue_depth() != 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    first.close()  # cancels: the worker stops asking for decode steps, and the next request runs
    waiting.join(timeout=60)
    assert not waiting.is_alive() and on.queue_depth() == 0
    decoded = chunks[: chunks.index(min(chunks))]  # chunks before the waiting request's result was recorded
    assert sum(c for c in decoded if c > 0) < 200  # far fewer than the 400 tokens asked for (+ warm-up, + next)


def test_fast_decode_setup_failure_falls_back_once_or_raises_when_required(
        tiny_llama: Path, chat: HFChatModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from rag.llm.fastgen import generator as fastgen

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("triton: no compiler")

    monkeypatch.setattr(fastgen.FastGenerator, "__init__", broken)
    prompt = talkative(chat)
    expected = chat.generate(prompt)
    auto = load(tiny_llama)
    assert auto.fast_decode == "auto" and not auto._uses_fast(auto.default_gen)  # auto: off on a CPU
    monkeypatch.setattr(auto, "_uses_fast", lambda gen: True)  # as on a GPU
    with caplog.at_level(logging.WARNING, logger="rag.llm.hf.model"):
        assert auto.generate(prompt) == expected and auto.generate(prompt) == expected
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == ("fast decoding is unavailable (RuntimeError: triton: no compiler); answering with "
                       "transformers' generate from now on")
    assert auto.info().extra["fast_decode"] == "unavailable: RuntimeError: triton: no compiler"

    on = load(tiny_llama, fast_decode="on")
    with pytest.raises(RagError, match=r"^llm.fast_decode=on, but the fast decoder could not be set up \(RuntimeError: "
                       r"triton: no compiler\); set llm.fast_decode=auto to answer with transformers' generate"):
        list(on.stream(prompt))
    assert on.queue_depth() == 0
    with pytest.raises(ConfigError, match=r"^llm.fast_decode=on cannot apply repetition_penalty=1.1; set "
                       r"llm.repetition_penalty=1.0, or llm.fast_decode=auto to use generate for it$"):
        on.stream(prompt, GenerationConfig(max_new_tokens=12, repetition_penalty=1.1))
    with pytest.raises(ConfigError, match=r"^llm.fast_decode='fast' is not one of auto, on, off$"):
        load(tiny_llama, fast_decode="fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_decode_on_gpu_matches_generate_with_adapters(models_dir: Path) -> None:
    base_folder = build_tiny_chat_model(models_dir / "gpu-base", "glm", seed=1)
    config = {"model": str(base_folder), "device": "cuda", "dtype": "float32", "max_new_tokens": 24}
    off = HFChatModel.load(LLMConfig(**config, fast_decode="off"))
    fast = HFChatModel.load(LLMConfig(**config))  # auto: the CUDA graph path for GLM on a GPU
    prompt = talkative(off)
    assert fast.generate(prompt) == off.generate(prompt) != ""
    assert fast.info().extra["fast_decode"].startswith("graph")
    adapter = make_lora_adapter(base_folder, models_dir / "gpu-lora", seed=5)
    off.load_adapter("a", adapter)
    fast.load_adapter("a", adapter)
    for name in ("a", None, "a"):
        assert fast.generate(prompt, adapter=name) == off.generate(prompt, adapter=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_warm_up_on_gpu_captures_the_graph_before_the_first_request(models_dir: Path) -> None:
    from rag.answer.backend import start_warm_up

    folder = build_tiny_chat_model(models_dir / "gpu-warm", "glm", seed=2)
    config = {"model": str(folder), "device": "cuda", "dtype": "float32", "max_new_tokens": 24}
    cold, warm = HFChatModel.load(LLMConfig(**config)), HFChatModel.load(LLMConfig(**config))
    thread = start_warm_up(warm)
    assert thread is not None
    thread.join(timeout=300)
    assert (None, False) in warm._decoder.warm and warm.info().extra["fast_decode"].startswith("graph")
    prompt = talkative(cold)
    started = time.perf_counter()
    cold_text = cold.generate(prompt)  # builds and captures inside the first request
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    warm_text = warm.generate(prompt)
    warm_s = time.perf_counter() - started
    assert warm_text == cold_text != ""
    assert warm_s < cold_s / 2, (warm_s, cold_s)


# --- ChatGLM3: converted to native GLM, finetune_demo adapters converted too ---------------------------------------


@pytest.mark.integration
def test_chatglm3_checkpoint_loads_natively_with_a_finetune_demo_adapter(tmp_path: Path, offline: Path) -> None:
    from rag.llm.adapters import load_named_adapter
    from rag.models.adapters import list_adapters

    checkpoint = tinymodels.build_chatglm3_checkpoint(tmp_path)  # ChatGLM3's own layout: no modeling code needed
    adapters_dir = tmp_path / "adapters"
    adapters_dir.mkdir()
    demo = tinymodels.build_chatglm3_lora(tmp_path, checkpoint)  # LoRA on the fused query_key_value
    demo.rename(adapters_dir / "demo")
    chat = HFChatModel.load(LLMConfig(model=str(checkpoint), device="cpu", max_new_tokens=10,
                                      adapters_dir=str(adapters_dir), cache_dir=str(tmp_path / "unused")))
    native = [p for p in offline.iterdir() if p.name.startswith("chatglm3-tiny-native-")]
    assert len(native) == 1 and (native[0] / "kbqa_conversion.json").is_file()  # converted once into the cache
    assert chat.info().template == "chatglm3" and type(chat.base_config).__name__ == "GlmConfig"
    assert canonical_model_id(str(native[0])) == canonical_model_id(str(checkpoint)) == "chatglm3-6b"
    vocab = chat.tokenizer.get_vocab()
    assert set(chat.stop_token_ids) == {vocab["</s>"], vocab["<|user|>"], vocab["<|observation|>"]}
    prompt = talkative(chat)
    base = chat.generate(prompt)
    assert base == chat.tokenizer.decode(reference_ids(chat, prompt, 10), skip_special_tokens=True)

    (listed,) = list_adapters(adapters_dir, base_model_id=chat.info().model_id, template=chat.info().template)
    assert (listed.name, listed.usable, listed.fused_qkv) == ("demo", True, True)
    load_named_adapter(chat, adapters_dir, "demo", cache_dir=str(tmp_path / "unused"))
    assert (offline / "adapters-native").is_dir() and chat.adapters == ("demo",)
    assert chat.generate(prompt, adapter="demo") != base and chat.generate(prompt) == base

    again = HFChatModel.load(LLMConfig(model=str(checkpoint), device="cpu", max_new_tokens=10, adapter="demo",
                                       adapters_dir=str(adapters_dir)))  # llm.adapter: loaded with the base
    assert again.adapters == ("demo",) and again.generate(prompt) == base
    assert [p for p in offline.iterdir() if p.name.startswith("chatglm3-tiny-native-")] == native  # not reconverted


def test_warm_up_builds_the_fast_decoder_before_the_first_request(tiny_llama: Path, chat: HFChatModel) -> None:
    """``warm_up`` (started in the background by the app and rag.cli.serve) builds the fast decoder and its greedy step
    through the request queue; the first real request then finds it warm and answers as generate does. Where
    requests would not use it (fast_decode off, or CPU with auto) it does nothing."""
    from rag.answer.backend import start_warm_up

    on = load(tiny_llama, fast_decode="on")
    assert on.info().extra["fast_decode"] == "on" and not on._decoder.warm  # nothing built at load
    thread = start_warm_up(on)
    assert thread is not None
    thread.join(timeout=120)
    assert not thread.is_alive() and (None, False) in on._decoder.warm
    assert on.info().extra["fast_decode"] != "on"  # the decoder exists (its backend is named)
    assert on.warm_up() is False  # already warm: no second capture
    prompt = talkative(chat)
    assert list(on.stream(prompt)) == list(chat.stream(prompt))
    for idle in (load(tiny_llama, fast_decode="off"), load(tiny_llama)):  # off; auto on CPU
        assert idle.warm_up() is False and idle._decoder.generator is None
    assert start_warm_up(object()) is None  # backends without a fast decoder (extractive, openai)
