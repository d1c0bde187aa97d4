"""Decode speed of the answering model: naive ``generate`` vs static-cache ``generate`` vs :class:`FastGenerator`.

ChatGLM3-6B's shape as transformers' native ``GlmForCausalLM`` (6.24 B parameters), random bf16 weights made on the
GPU (nothing is downloaded). Every measurement is one JSON line on stdout (and in ``--out``), each naming the device;
the last line is the summary with the ratios. Stages run in order of importance and are skipped past ``--deadline-s``.

    python bench/decode.py                 # full shape, needs a CUDA GPU with ~20 GB
    python bench/decode.py --small         # tiny shape; runs on CPU in seconds (eager step instead of a graph)
    python bench/decode.py --serve         # end to end through rag.llm.hf.model.HFChatModel.stream: fast_decode auto vs off

``--serve`` puts the same model in two :class:`rag.llm.hf.model.HFChatModel` (built directly, no hub) with a ChatGLM3-style
tokenizer made here (ChatGLM3's special tokens, then one token per CJK character up to the 65,024 ids, so every
streamed character is one token) and times the streamed answer as the app gets it: the chat template, the FIFO
queue, the worker thread and the incremental detokenisation included.

Decode tokens/s = (new tokens - 1) / (total time - time to the first token), so prefill is not counted; for
``generate`` the time to the first token is ``generate(max_new_tokens=1)`` on the same prompt.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rag.core.types import Message
from rag.llm.fastgen.generator import FastGenerator

CHATGLM3_6B = {"vocab_size": 65024, "hidden_size": 4096, "intermediate_size": 13696, "num_hidden_layers": 28,
               "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128, "max_position_embeddings": 8192}
SMALL = {"vocab_size": 1024, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 8192}
START = time.perf_counter()
RESULTS: dict[str, dict[str, Any]] = {}


class Bench:
    def __init__(self, device: torch.device, out: Path | None, deadline_s: float) -> None:
        self.device, self.deadline_s = device, deadline_s
        self.name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.out = out.open("a") if out else None

    def emit(self, stage: str, **fields: Any) -> None:
        line = {"stage": stage, "device": self.name, "t_s": round(time.perf_counter() - START, 1), **fields}
        RESULTS[stage] = line
        text = json.dumps(line, ensure_ascii=False)
        print(text, flush=True)
        if self.out:
            self.out.write(text + "\n")
            self.out.flush()

    def run(self, stage: str, fn: Callable[[], dict[str, Any]], needs_s: float = 0.0) -> None:
        left = self.deadline_s - (time.perf_counter() - START)
        if left < needs_s:
            self.emit(stage, skipped=f"deadline: {left:.0f} s left, needs ~{needs_s:.0f} s")
            return
        try:
            self.emit(stage, **fn())
        except Exception as exc:  # one failing stage must not lose the others
            self.emit(stage, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def glm_config(shape: dict[str, int], attn: str = "sdpa") -> Any:
    """ChatGLM3's architecture as transformers' native GLM (half rotary, q/k/v biases) with ``shape``'s sizes."""
    from transformers import GlmConfig

    return GlmConfig(**shape, partial_rotary_factor=0.5, attention_bias=True, rms_norm_eps=1e-5, pad_token_id=0,
                     attn_implementation=attn)


def build_model(shape: dict[str, int], device: torch.device, dtype: torch.dtype, attn: str = "sdpa") -> Any:
    """Random weights initialised where they live (no CPU copy of 12 GB), in eval mode."""
    from transformers import GlmForCausalLM

    config = glm_config(shape, attn)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = GlmForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = 0
    return model.eval()


def copy_bandwidth_gb_s(device: torch.device) -> int:
    """The memory-bandwidth ceiling, measured: read + write of a 2 GiB bf16 copy, 5 times (GB/s)."""
    src = torch.empty(2**30, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize(device)
    return round(5 * 2 * src.nbytes / (start.elapsed_time(end) / 1e3) / 1e9)


def prompt_of(length: int, vocab: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (length,), generator=gen).tolist()


def hf_time(b: Bench, model: Any, prompt: list[int], new_tokens: int, **kw: Any) -> tuple[float, list[int]]:
    ids = torch.tensor([prompt], device=b.device)
    b.sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=0, **kw)
    b.sync()
    return time.perf_counter() - t0, out[0, len(prompt):].tolist()


CHATGLM3_SPECIALS = ["<unk>", "<s>", "</s>", "[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>",
                     "<|observation|>"]
CJK_RANGES = ((0x4E00, 0xA000), (0x3400, 0x4DC0), (0x20000, 0x2A6E0))  # 70,304 characters


def chat_tokenizer(vocab_size: int) -> Any:
    """ChatGLM3's special tokens, then one token per CJK character up to ``vocab_size`` ids (rag.models.templates detects
    the chatglm3 template from the specials); decoding concatenates, so a streamed character is one token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for lo, hi in CJK_RANGES for c in range(lo, hi)]
    vocab = {t: i for i, t in enumerate(CHATGLM3_SPECIALS + chars[: vocab_size - len(CHATGLM3_SPECIALS)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=False, strip_accents=False)
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHATGLM3_SPECIALS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<unk>")


def serve_time(chat: Any, messages: list[Message], gen: Any, runs: int) -> dict[str, Any]:
    """Median over runs of HFChatModel.stream: time to the first piece, decode and end-to-end tokens/s."""
    firsts, rates, e2e, counts, text = [], [], [], [], ""
    for _ in range(runs):
        t0 = time.perf_counter()
        first, pieces = 0.0, []
        for piece in chat.stream(messages, gen):
            first = first or time.perf_counter() - t0
            pieces.append(piece)
        total = time.perf_counter() - t0
        text = "".join(pieces)
        firsts.append(first)
        counts.append(len(text))  # one character per token (chat_tokenizer)
        rates.append((len(text) - 1) / (total - first))
        e2e.append(len(text) / total)
    return {"decode_tok_s": round(statistics.median(rates), 1), "end_to_end_tok_s": round(statistics.median(e2e), 1),
            "ttft_ms": round(1e3 * statistics.median(firsts), 1), "tokens": counts, "runs": runs,
            "max_new_tokens": gen.max_new_tokens, "text": text}


def serve(b: Bench, model: Any, args: argparse.Namespace, vocab: int, skip: set[str]) -> None:
    """End-to-end streaming through HFChatModel: fast_decode auto (FastGenerator) vs off (TextIteratorStreamer +
    generate), same model, same process."""
    from rag.llm.base import GenerationConfig
    from rag.llm.hf.model import HFChatModel

    tokenizer = chat_tokenizer(vocab)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    if b.device.type == "cpu":  # smoke run: FastGenerator's static-cache step without a graph
        HFChatModel._FAST_BACKEND = "eager"
    mode = "auto" if b.device.type == "cuda" else "on"
    chats = {name: HFChatModel(model, tokenizer, model_id="chatglm3-6b-shape (random)", context_window=8192,
                               fast_decode=name) for name in (mode, "off")}
    gen = random.Random(3)
    question = "".join(chr(gen.randrange(0x4E00, 0x9FA6)) for _ in range(max(1, args.prompt_tokens - 16)))
    messages = [Message("system", "你是知识库助手。"), Message("user", question)]
    prompt_tokens = len(chats["off"].encode_messages(messages))
    long, short = (GenerationConfig(max_new_tokens=n, temperature=0.0) for n in (args.new_tokens, args.naive_new_tokens))
    texts: dict[str, str] = {}

    def fast() -> dict[str, Any]:
        chat = chats[mode]
        t = time.perf_counter()
        list(chat.stream(messages, GenerationConfig(max_new_tokens=4)))  # builds the decoder, captures its graph
        setup = time.perf_counter() - t
        result = {"setup_s": round(setup, 2), "fast_decode": chat.info().extra["fast_decode"],
                  "prompt_tokens": prompt_tokens, "long": serve_time(chat, messages, long, runs=3),
                  "short": serve_time(chat, messages, short, runs=3)}
        texts["fast"] = result["short"].pop("text")
        result["long"].pop("text")
        bare = chat._decoder.generator  # the same decoder without the chat layer: what streaming costs on top
        if bare is not None and bare.backend != "hf":
            ids = chat.encode_messages(messages)
            result["bare_fastgenerator"] = fast_time(bare, [ids], args.new_tokens, runs=3)
        result["ttft_breakdown_ms"] = ttft_breakdown(chat, messages)
        return result

    def ttft_breakdown(chat: Any, messages: list[Message]) -> dict[str, float]:
        """Where the time to the first piece goes: prompt encoding, the decoder's first chunk, the streamer."""
        marks: list[float] = []
        real = FastGenerator.generate_batch

        def marked(self: Any, *a: Any, **kw: Any) -> Any:
            for i, chunk in enumerate(real(self, *a, **kw)):
                if i == 0:
                    marks.append(time.perf_counter())
                yield chunk

        rows: list[tuple[float, float, float]] = []
        FastGenerator.generate_batch = marked  # type: ignore[method-assign]
        try:
            for _ in range(5):
                t0 = time.perf_counter()
                chat.encode_messages(messages)
                encoded = time.perf_counter()
                stream = chat.stream(messages, GenerationConfig(max_new_tokens=32))
                next(stream)
                piece = time.perf_counter()
                for _ in stream:
                    pass
                rows.append((encoded - t0, marks[-1] - encoded, piece - encoded))
        finally:
            FastGenerator.generate_batch = real  # type: ignore[method-assign]
        encode, chunk, piece = (1e3 * statistics.median(r[i] for r in rows) for i in range(3))
        return {"encode_messages": round(encode, 1), "stream_call_to_first_chunk": round(chunk, 1),
                "stream_call_to_first_piece": round(piece, 1)}

    def off() -> dict[str, Any]:
        chat = chats["off"]
        list(chat.stream(messages, GenerationConfig(max_new_tokens=4)))  # warm-up
        result = {"fast_decode": chat.info().extra["fast_decode"], "prompt_tokens": prompt_tokens,
                  "short": serve_time(chat, messages, short, runs=2)}
        texts["off"] = result["short"].pop("text")
        return result

    b.run("serve_fast", fast)
    if "off" not in skip:
        b.run("serve_off", off)
    same = next((i for i, (x, y) in enumerate(zip(texts.get("fast", ""), texts.get("off", ""), strict=False))
                 if x != y), min(len(texts.get("fast", "")), len(texts.get("off", ""))))
    rate = {k: RESULTS.get(f"serve_{k}", {}).get("short", {}).get("decode_tok_s") for k in ("fast", "off")}
    b.emit("summary", serve_fast_decode_tok_s=rate["fast"], serve_off_decode_tok_s=rate["off"],
           serve_fast_over_off=round(rate["fast"] / rate["off"], 2) if rate["fast"] and rate["off"] else None,
           serve_fast_long_decode_tok_s=RESULTS.get("serve_fast", {}).get("long", {}).get("decode_tok_s"),
           bare_fastgenerator_tok_s=RESULTS.get("serve_fast", {}).get("bare_fastgenerator", {}).get("decode_tok_s"),
           greedy_text_prefix_equal=same, bf16_note="random bf16 weights: greedy paths drift apart after a few tokens")


def fast_time(gen: FastGenerator, prompts: list[list[int]], new_tokens: int, runs: int) -> dict[str, Any]:
    """Median over runs of: time to the first chunk, decode tokens/s over all rows."""
    firsts, rates, totals = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        first, counts = 0.0, [0] * len(prompts)
        for chunk in gen.generate_batch(prompts, max_new_tokens=new_tokens):
            first = first or time.perf_counter() - t0
            counts = [c + len(t) for c, t in zip(counts, chunk, strict=True)]
        total = time.perf_counter() - t0  # the generator's last step read the tokens back: the device is done
        firsts.append(first)
        totals.append(total)
        rates.append(sum(c - 1 for c in counts) / (total - first))
    return {"decode_tok_s": round(statistics.median(rates), 1), "ttft_ms": round(1e3 * statistics.median(firsts), 1),
            "total_s": round(statistics.median(totals), 3), "runs": runs, "rows": len(prompts),
            "new_tokens": new_tokens, "prompt_tokens": [len(p) for p in prompts]}


def tokens_and_logits(gen: FastGenerator, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens of ``steps`` decode steps and the float32 logits of each step ``[steps, vocab]``."""
    chunk_tokens, gen.chunk_tokens = gen.chunk_tokens, 1
    tokens, logits = [], []
    for chunk in gen.generate(prompt, max_new_tokens=steps):
        tokens.append(chunk[0])
        logits.append(gen.logits[0].clone())
    gen.chunk_tokens = chunk_tokens
    return tokens, torch.stack(logits)


def logit_check(b: Bench, model: Any, gen: FastGenerator, prompt: list[int], steps: int) -> dict[str, Any]:
    """Teacher-forced: fast logits per step vs the model's full forward and vs HF's incremental (generate) path."""
    tokens, fast_logits = tokens_and_logits(gen, prompt, steps)
    fast = list(fast_logits)
    seq = torch.tensor([prompt + tokens], device=b.device)
    with torch.no_grad():
        full = model(seq).logits[0, len(prompt) - 1 : len(prompt) - 1 + steps].float()
        out = model(seq[:, : len(prompt)], use_cache=True)
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        incremental = [out.logits[0, -1].float()]
        for j in range(steps - 1):
            out = model(seq[:, len(prompt) + j : len(prompt) + j + 1], past_key_values=cache, use_cache=True)
            incremental.append(out.logits[0, -1].float())
    fast_l, incr = torch.stack(fast), torch.stack(incremental)

    def diff(a: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        return {"max_abs": round(float((a - ref).abs().max()), 4),
                "rel_l2": round(float((a - ref).norm() / ref.norm()), 5),
                "argmax_agree": round(float((a.argmax(-1) == ref.argmax(-1)).float().mean()), 3)}

    return {"steps": steps, "logit_abs_max": round(float(full.abs().max()), 2),
            "fast_vs_naive_incremental": diff(fast_l, incr), "fast_vs_full_forward": diff(fast_l, full),
            "naive_incremental_vs_full_forward": diff(incr, full)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shape (CPU-friendly smoke run)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--naive-new-tokens", type=int, default=128)
    parser.add_argument("--rag-prompt-tokens", type=int, default=2000, help="prompt length for time to first token")
    parser.add_argument("--users", type=int, default=8, help="rows of the batched-decode measurement")
    parser.add_argument("--skip", default="", help="comma-separated stages to skip: stock,compile (the no-compile variant),sdpa,lora,batch,"
                        "unfused (the layer walk without the fused GEMVs)")
    parser.add_argument("--deadline-s", type=float, default=540.0, help="skip stages that would start after this")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    parser.add_argument("--serve", action="store_true",
                        help="only the end-to-end HFChatModel.stream stages: fast_decode auto vs off "
                             "(--new-tokens for the fast path's long run, --naive-new-tokens for both; --skip off: fast only)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    skip = set(filter(None, args.skip.split(",")))
    if args.small:
        args.prompt_tokens, args.new_tokens, args.naive_new_tokens = 64, 48, 32
        args.rag_prompt_tokens = min(args.rag_prompt_tokens, 500)
        if device.type == "cpu":
            skip |= {"stock", "compile"}
    b = Bench(device, args.out, args.deadline_s)
    backend = "graph" if device.type == "cuda" else "eager"
    shape = SMALL if args.small else CHATGLM3_6B
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    import transformers

    t0 = time.perf_counter()
    model = build_model(shape, device, dtype)
    b.sync()
    b.emit("env", torch=torch.__version__, transformers=transformers.__version__, dtype=str(dtype),
           params_b=round(sum(p.numel() for p in model.parameters()) / 1e9, 3), build_s=round(time.perf_counter() - t0, 1),
           attn_implementation=str(getattr(model.config, "_attn_implementation", "?")), shape=shape,
           weight_gb=round(sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9, 2))
    if device.type == "cuda":
        RESULTS["env"]["copy_bandwidth_gb_s"] = copy_bandwidth_gb_s(device)
    vocab = shape["vocab_size"]
    if args.serve:
        serve(b, model, args, vocab, skip)
        return
    prompt = prompt_of(args.prompt_tokens, vocab, 1)
    rag_prompt = prompt_of(args.rag_prompt_tokens, vocab, 2)
    naive_tokens: list[int] = []

    def naive() -> dict[str, Any]:
        hf_time(b, model, prompt[:32], 4)  # warm-up
        prefill = statistics.median(hf_time(b, model, prompt, 1)[0] for _ in range(3))
        rag_ttft = statistics.median(hf_time(b, model, rag_prompt, 1)[0] for _ in range(3))
        total, naive_tokens[:] = hf_time(b, model, prompt, args.naive_new_tokens)
        return {"decode_tok_s": round((args.naive_new_tokens - 1) / (total - prefill), 1), "total_s": round(total, 2),
                "prefill_ms": round(1e3 * prefill, 1), "ttft_rag_ms": round(1e3 * rag_ttft, 1),
                "new_tokens": args.naive_new_tokens, "prompt_tokens": len(prompt)}

    b.run("naive_generate", naive)
    gen_holder: dict[str, FastGenerator] = {}

    def fast() -> dict[str, Any]:
        t = time.perf_counter()
        gen = gen_holder["gen"] = FastGenerator(model, max_batch=args.users, max_len=4096, backend=backend)
        list(gen.generate(prompt, max_new_tokens=40))  # captures the batch-1 graph
        setup = time.perf_counter() - t
        result = fast_time(gen, [prompt], args.new_tokens, runs=3)
        list(gen.generate(rag_prompt, max_new_tokens=1))
        ttft = fast_time(gen, [rag_prompt], 1, runs=5)["ttft_ms"]
        tokens = [t for c in gen.generate(prompt, max_new_tokens=len(naive_tokens)) for t in c]
        same = next((i for i, (x, y) in enumerate(zip(tokens, naive_tokens, strict=False)) if x != y), len(tokens))
        return {**result, "attention": gen.attention, "backend": gen.backend, "setup_s": round(setup, 2),
                "ttft_rag_ms": ttft, "rag_prompt_tokens": len(rag_prompt), "greedy_prefix_equal_to_naive": same,
                "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None}

    b.run("fast", fast)
    b.run("logits", lambda: logit_check(b, model, gen_holder["gen"], prompt, 16) if "gen" in gen_holder else {})

    def unfused() -> dict[str, Any]:  # the general layer walk (cuBLAS GEMVs + separate norms), same run
        gen = FastGenerator(model, max_batch=1, max_len=4096, backend=backend, fuse_gemv=False)
        list(gen.generate(prompt, max_new_tokens=40))
        out = fast_time(gen, [prompt], args.new_tokens, runs=3)
        tokens = [t for c in gen.generate(prompt, max_new_tokens=64) for t in c]
        fused = [t for c in gen_holder["gen"].generate(prompt, max_new_tokens=64) for t in c]
        out["greedy_prefix_equal_to_fused"] = next(
            (i for i, (x, y) in enumerate(zip(tokens, fused, strict=False)) if x != y), len(tokens))
        return out

    if "unfused" not in skip and "gen" in gen_holder:
        b.run("fast_unfused", unfused, needs_s=20)

    def lora() -> dict[str, Any]:
        import peft

        config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
        lora_model = peft.get_peft_model(model, config).eval()
        for name, param in lora_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)  # B starts at zero; make the adapter do something
        n_lora = sum(1 for n, _ in lora_model.named_modules() if n.endswith("lora_A"))
        adapter_dtype = next(str(p.dtype) for n, p in lora_model.named_parameters() if "lora_A" in n)
        out: dict[str, Any] = {"lora_linears": n_lora, "r": 8, "adapter_dtype": adapter_dtype}
        try:
            gen = FastGenerator(lora_model, max_batch=1, max_len=4096, backend=backend)
            list(gen.generate(prompt, max_new_tokens=40))
            out["fused"] = fast_time(gen, [prompt], args.new_tokens, runs=3)
            out["logits"] = logit_check(b, lora_model, gen, prompt, 8)
            with lora_model.disable_adapter():  # adapter off = another graph, base speed
                list(gen.generate(prompt, max_new_tokens=40))
                out["disabled"] = fast_time(gen, [prompt], args.new_tokens, runs=2)["decode_tok_s"]
            del gen
            gen = FastGenerator(lora_model, max_batch=1, max_len=4096, backend=backend, fuse_lora=False)
            list(gen.generate(prompt, max_new_tokens=40))
            out["peft_forward_in_graph"] = fast_time(gen, [prompt], args.new_tokens, runs=2)["decode_tok_s"]
            del gen
            total, _ = hf_time(b, lora_model, prompt, 48)
            prefill = hf_time(b, lora_model, prompt, 1)[0]
            out["naive_generate_tok_s"] = round(47 / (total - prefill), 1)
        finally:
            lora_model.unload()  # back to the plain model for the stages below
        base = RESULTS.get("fast", {}).get("decode_tok_s")
        if base:
            out["cost_vs_base"] = round(1 - out["fused"]["decode_tok_s"] / base, 3)
        return out

    if "lora" not in skip:
        b.run("lora", lora, needs_s=40)

    def batch() -> dict[str, Any]:
        gen = gen_holder["gen"]
        same = [prompt_of(args.prompt_tokens, vocab, 10 + i) for i in range(args.users)]
        mixed = [prompt_of(200 + (i * 1800) // max(1, args.users - 1), vocab, 20 + i) for i in range(args.users)]
        list(gen.generate_batch(same, max_new_tokens=20))
        n = args.new_tokens // 2
        return {"same_length": fast_time(gen, same, n, runs=2), "mixed_length": fast_time(gen, mixed, n, runs=2)}

    if "batch" not in skip and "gen" in gen_holder:
        b.run("batch", batch, needs_s=30)
    gen_holder.clear()

    def stock() -> dict[str, Any]:
        t = time.perf_counter()
        hf_time(b, model, prompt, args.new_tokens, cache_implementation="static")
        first_call = time.perf_counter() - t
        hf_time(b, model, prompt, args.new_tokens, cache_implementation="static")
        prefill = hf_time(b, model, prompt, 1)[0]
        totals = [hf_time(b, model, prompt, args.new_tokens, cache_implementation="static")[0] for _ in range(2)]
        total = statistics.median(totals)
        return {"decode_tok_s": round((args.new_tokens - 1) / (total - prefill), 1), "total_s": round(total, 2),
                "first_call_s": round(first_call, 1), "new_tokens": args.new_tokens}

    if "stock" not in skip:
        b.run("stock_static_generate", stock, needs_s=150)

    def variant(**kw: Any) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            t = time.perf_counter()
            gen = FastGenerator(model, max_batch=1, max_len=4096, backend=backend, **kw)
            list(gen.generate(prompt, max_new_tokens=40))
            setup = round(time.perf_counter() - t, 1)
            return {**fast_time(gen, [prompt], args.new_tokens, runs=3), "setup_s": setup, **kw}
        return go

    if "sdpa" not in skip:
        b.run("fast_sdpa_attention", variant(attention="sdpa"), needs_s=20)
    if "compile" not in skip and backend == "graph":
        b.run("fast_no_compile", variant(compile=False), needs_s=20)

    def rate(stage: str) -> float | None:
        value = RESULTS.get(stage, {}).get("decode_tok_s")
        return float(value) if value else None

    naive_r, stock_r, fast_r = (rate(s) for s in ("naive_generate", "stock_static_generate", "fast"))
    best = fast_r or 0.0
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) - model.get_input_embeddings().weight.nbytes
    bandwidth = RESULTS["env"].get("copy_bandwidth_gb_s")
    b.emit("summary", naive_tok_s=naive_r, stock_static_tok_s=stock_r, fast_tok_s=fast_r,
           fast_no_compile_tok_s=rate("fast_no_compile"),
           fast_unfused_tok_s=rate("fast_unfused"), fast_sdpa_tok_s=rate("fast_sdpa_attention"),
           fast_over_naive=round(best / naive_r, 2) if naive_r else None,
           fast_over_stock=round(best / stock_r, 2) if stock_r else None,
           ttft_rag_ms=RESULTS.get("fast", {}).get("ttft_rag_ms"),
           lora_cost=RESULTS.get("lora", {}).get("cost_vs_base"),
           users_tok_s=RESULTS.get("batch", {}).get("mixed_length", {}).get("decode_tok_s"),
           bytes_per_token_gb=round(weights / 1e9, 2),
           bandwidth_bound_tok_s=round(bandwidth * 1e9 / weights, 1) if bandwidth else None,
           peak_mem_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None)


if __name__ == "__main__":
    main()
