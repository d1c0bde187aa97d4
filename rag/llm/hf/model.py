"""A local transformers chat model (ChatGLM3 through native GLM, or any HF chat model) with LoRA adapters.

One :class:`HFChatModel` holds one base model on one device and any number of peft LoRA adapters on top of it.
Requests are served **one at a time, first come first served**: :meth:`HFChatModel.stream` takes a turn when the
caller starts iterating and keeps the model until the answer ends or the caller stops iterating (closing the
generator, from any thread, cancels the generation at its next token). The generation thread itself gives the turn
back when it ends, so a generator that is dropped without being closed (a client that hung up) holds the model at
most until its ``max_new_tokens`` are generated, never for good. Others wait their turn; :meth:`HFChatModel.queue_depth` says how many wait.
The adapter of a request (or "adapters disabled" for the base model) is switched while holding the model, so
concurrent requests with different adapters never mix.

Generation runs in a background thread that feeds transformers' ``TextIteratorStreamer``; the caller's thread
yields the text pieces. With ``llm.fast_decode`` (``auto``: on CUDA for unquantised GLM / Llama / Qwen2 models) that
thread runs :class:`rag.llm.fastgen.generator.FastGenerator` (CUDA-graph decode steps) instead of ``model.generate``: built by
the first request (~15 s for ChatGLM3-6B on an H100: compile + capture), one per model, a captured graph per adapter
state, rebuilt after an adapter loads; the streamer gets its tokens one at a time, as ``generate`` feeds them, so the
text pieces are the same. If it cannot be set up, ``auto`` logs a warning once and answers with ``generate`` from then
on; ``on`` raises. Prompts come from :mod:`rag.models.templates` when the chat template is known, else from the
tokenizer's own ``chat_template``. Loading (resolution, device, dtype, quantization) is in :mod:`rag.llm.hf.load`,
the fast decoder (a collaborator it owns) in :mod:`rag.llm.hf.fast`, the FIFO lock in :mod:`rag.core.fifo`. Importing this module
loads neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

# ``x``: re-exported, finetune / rag.cli.models / rag.embed.embedder / tests import these from here
from rag.core.config import LLMConfig
from rag.core.device import is_oom, release_memory
from rag.core.errors import RagError
from rag.core.fifo import FifoTurns
from rag.core.paths import cache_root
from rag.core.serial import SerialWorker
from rag.core.types import Hit, Message
from rag.llm.base import GenerationConfig, ModelInfo
from rag.llm.hf.fast import FastDecoder
from rag.llm.hf.load import (
    BNB_QUANTIZATIONS,
    GPUOutOfMemoryError,
    chat_template_for,
    load_errors,
    load_pretrained,
    resolve,
)
from rag.llm.hf.quantized import FAST_QUANTIZATIONS

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class PromptTooLongError(RagError):
    """The prompt plus ``max_new_tokens`` does not fit the model's context window."""


class HFChatModel:
    """A transformers causal LM + tokenizer (+ peft LoRA adapters) behind the :class:`rag.llm.base.ChatModel` protocol.

    Build it with :meth:`load`; the constructor takes objects already loaded (tests, notebooks, benchmarks).
    ``fast_decode`` is ``llm.fast_decode``: auto | on | off (see the module docstring).
    """

    _FAST_BACKEND = "auto"  # FastGenerator's backend; tests set "eager" to run its static-cache step on the CPU

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str, revision: str = "", context_window: int = 0,
                 default_gen: GenerationConfig | None = None, origin: str = "", quantization: str = "",
                 fast_decode: str = "auto", quantized: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id, self.revision, self.origin, self.quantization = model_id, revision, origin, quantization
        self.default_gen = default_gen or GenerationConfig()
        self.template_name, self._template = chat_template_for(tokenizer)
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.context_window = min(w for w in (context_window, limit) if w > 0) if (context_window or limit) else 4096
        self.stop_token_ids = self._stop_tokens()
        self._adapters: dict[str, Path] = {}
        self._turns = FifoTurns()
        self._tokenizer_lock = threading.Lock()  # fast tokenizers raise "Already borrowed" when shared unguarded
        self.fast_decode = fast_decode
        self._decoder = FastDecoder(fast_decode, model_id=model_id, context_window=self.context_window,
                                    tokenizer=tokenizer, quantize=quantization if quantized is not None else "",
                                    quantized=quantized)
        self._worker = SerialWorker("hf-generate")  # one long-lived generation thread (see _stream_ids)

    # --- loading ------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, cfg: LLMConfig, network: bool = True) -> HFChatModel:
        """Resolve ``cfg.model`` (local folder, caches, hubs unless ``network`` is False), convert a ChatGLM3 checkpoint to native GLM once, and
        load it in eval mode on ``cfg.device`` with ``cfg.dtype`` / ``cfg.quantization``; then ``cfg.adapter``, if set.

        Raises:
            ModelUnavailableError: the model is nowhere to be had, or its folder does not load.
            ConfigError: a setting cannot work here (dtype, quantization without CUDA / bitsandbytes, remote code).
        """
        quantized: dict[str, Any] | None = None
        if cfg.quantization in FAST_QUANTIZATIONS:  # weight-only int8/int4, served by the fast decoder
            from transformers import AutoTokenizer

            from rag.llm.hf import quantized as fast_quant

            folder, origin, trust, device, dtype = resolve(cfg, network)
            fast_quant.check_settings(cfg.quantization, fast_decode=cfg.fast_decode, device=device)
            with load_errors(cfg, folder, device, dtype):
                tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
                model, quantized, how = fast_quant.load(folder, cfg.quantization, device, dtype,
                                                        cache_root(cfg.cache_dir), trust)
            origin = f"{origin}; {cfg.quantization} weights {'from the cache' if how == 'cache' else 'quantized now'}"
        else:
            model, tokenizer, origin, device, dtype = load_pretrained(cfg, network)
        chat = cls(model, tokenizer, model_id=cfg.model, revision=cfg.revision, context_window=cfg.context_window,
                   default_gen=GenerationConfig.from_llm(cfg), origin=origin, quantization=cfg.quantization,
                   fast_decode=cfg.fast_decode, quantized=quantized)
        logger.info("loaded %s from %s on %s (%s), template %s", cfg.model, origin, device, dtype, chat.template_name)
        if cfg.adapter:
            from rag.llm.adapters import load_named_adapter

            load_named_adapter(chat, cfg.adapters_dir, cfg.adapter, cache_dir=cfg.cache_dir)
        return chat

    def load_adapter(self, name: str, path: Path) -> None:
        """Load a peft LoRA adapter folder onto this base model (no base reload); several adapters can coexist.

        Waits for the running generation, if any. Only ``adapter_model.safetensors`` is read (never a pickle).
        Use :func:`rag.models.adapters.load_named_adapter` to check the adapter's metadata against this model first.
        """
        from peft import PeftModel

        peft_model: Any = PeftModel
        path = Path(path)
        if not (path / ADAPTER_WEIGHTS).is_file():
            raise RagError(f"adapter {name!r}: {path / ADAPTER_WEIGHTS} not found (only safetensors are loaded)")
        with self._turns.turn():
            if name in self._adapters:
                raise RagError(f"adapter {name!r} is already loaded (from {self._adapters[name]})")
            if not self._adapters:
                self.model = peft_model.from_pretrained(self.model, str(path), adapter_name=name, is_trainable=False)
            else:
                self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            self.model.eval()
            self._adapters[name] = path
            self._decoder.drop()  # its graphs and fused LoRA weights were made for the old set of adapters
        logger.info("adapter %s loaded from %s", name, path)

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    @property
    def base_config(self) -> Any:
        """The base model's transformers config (adapter conversion needs its head layout)."""
        base = self.model.get_base_model() if self._adapters else self.model  # under a PeftModel once adapters load
        return base.config

    # --- the ChatModel protocol ---------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_messages(self, messages: Sequence[Message]) -> list[int]:
        """The prompt's token ids, ending with the assistant's turn opener."""
        with self._tokenizer_lock:
            if self._template is not None:
                return [int(i) for i in self._template.encode(self.tokenizer, list(messages), True)]
            turns = [{"role": m.role, "content": m.content} for m in messages]
            text = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def stream(self, messages: Sequence[Message], gen: GenerationConfig | None = None, adapter: str | None = None,
               context: Sequence[Hit] = ()) -> Iterator[str]:
        """Yield the answer's text in pieces (see the module docstring for queueing and adapters).

        Raises (at once, before any waiting):
            PromptTooLongError: prompt + ``max_new_tokens`` exceed :attr:`context_window`.
            RagError: ``adapter`` is not loaded.
            ConfigError: ``llm.fast_decode=on`` with a ``repetition_penalty`` other than 1.
        Raises (while iterating):
            GPUOutOfMemoryError: the accelerator ran out of memory; its cache is freed, the model stays usable.
        """
        gen = gen or self.default_gen
        if adapter is not None and adapter not in self._adapters:
            loaded = ", ".join(self._adapters) or "none"
            raise RagError(f"adapter {adapter!r} is not loaded (loaded: {loaded}); see rag.models.adapters.list_adapters")
        ids = self.encode_messages(messages)
        if len(ids) + gen.max_new_tokens > self.context_window:
            raise PromptTooLongError(
                f"the prompt takes {len(ids)} tokens and the answer up to max_new_tokens={gen.max_new_tokens}, "
                f"more than the model's context window of {self.context_window} tokens; shorten the history or the "
                "retrieved context (answer.history_tokens, answer.context_tokens) or lower llm.max_new_tokens"
            )
        return self._stream_ids(ids, gen, adapter, self._uses_fast(gen))

    def generate(self, messages: Sequence[Message], gen: GenerationConfig | None = None,
                 adapter: str | None = None) -> str:
        """The whole answer as one string."""
        return "".join(self.stream(messages, gen, adapter))

    def queue_depth(self) -> int:
        """Requests waiting for this model behind the one generating now."""
        return self._turns.waiting()

    def info(self) -> ModelInfo:
        return ModelInfo(
            backend="hf", model_id=self.model_id, revision=self.revision,
            dtype=str(self.model.dtype).removeprefix("torch."), device=str(self.model.device),
            adapters=self.adapters, template=self.template_name,
            extra={"origin": self.origin, "quantization": self.quantization, "context_window": str(self.context_window),
                   "fast_decode": self._decoder.state()},
        )

    # --- generation ---------------------------------------------------------------------------------------------

    def _uses_fast(self, gen: GenerationConfig) -> bool:
        """Whether this request goes through the fast decoder (decided before queueing; see ``llm.fast_decode``)."""
        return self._decoder.wanted(gen, device=str(self.model.device),
                                    quantized=self.quantization in BNB_QUANTIZATIONS,
                                    model_type=getattr(self.base_config, "model_type", ""))

    def warm_up(self, adapter: str | None = None) -> bool:
        """Build the fast decoder and capture its greedy graph for ``adapter`` now, through the normal request queue
        (a 2-token answer), so that the first user does not wait for it (~15 s for a 6B model on an H100). Returns
        whether anything was warmed: False when requests would not use the fast decoder (CPU, ``fast_decode=off``,
        a quantized model, or it already failed once)."""
        gen = replace(self.default_gen, max_new_tokens=2, temperature=0.0, repetition_penalty=1.0)
        if not self._uses_fast(gen) or (adapter, False) in self._decoder.warm:
            return False
        for _ in self.stream([Message(role="user", content="你好")], gen, adapter):
            pass
        return (adapter, False) in self._decoder.warm

    def _run_fast(self, ids: list[int], gen: GenerationConfig, adapter: str | None, streamer: Any,
                  cancel: threading.Event, failure: list[BaseException]) -> None:
        """Worker thread body with the fast decoder (falls back to :meth:`_run_generate` where it cannot run)."""
        self._decoder.run(self.model, self._FAST_BACKEND, ids, gen, adapter, lambda: self._adapter_scope(adapter),
                          self.stop_token_ids, streamer, cancel, failure,
                          fallback=lambda: self._run_generate(ids, gen, adapter, streamer, cancel, failure))

    def _stop_tokens(self) -> list[int]:
        """The template's stop tokens plus every eos id the tokenizer and generation config name."""
        stops: list[Any] = list(self._template.stop_token_ids(self.tokenizer)) if self._template is not None else []
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        stops += eos if isinstance(eos, list) else [eos]
        stops.append(self.tokenizer.eos_token_id)
        return [int(i) for i in dict.fromkeys(stops) if i is not None]

    def _generation_config(self, gen: GenerationConfig) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        config.update(max_new_tokens=gen.max_new_tokens, eos_token_id=list(self.stop_token_ids), pad_token_id=pad,
                      repetition_penalty=gen.repetition_penalty, do_sample=gen.temperature > 0, max_length=None)
        if gen.temperature > 0:
            config.update(temperature=gen.temperature, top_p=gen.top_p, top_k=None)
        else:  # greedy: sampling knobs left over from the model's config would only raise warnings
            config.update(temperature=None, top_p=None, top_k=None)
        return config

    def _adapter_scope(self, adapter: str | None) -> contextlib.AbstractContextManager[Any]:
        if not self._adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()  # the base model's own answer
        self.model.set_adapter(adapter, inference_mode=True)
        return contextlib.nullcontext()

    def _run_generate(self, ids: list[int], gen: GenerationConfig, adapter: str | None, streamer: Any,
                      cancel: threading.Event, failure: list[BaseException]) -> None:
        """Worker thread body: generate into ``streamer``; an error is stored for the caller and ends the stream."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):  # the caller stopped iterating: stop at the next token
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        try:
            with torch.inference_mode(), self._adapter_scope(adapter):
                if gen.seed is not None:
                    torch.manual_seed(gen.seed)
                input_ids = torch.tensor([ids], dtype=torch.long, device=self.model.device)  # [1, prompt_len]
                self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    generation_config=self._generation_config(gen), streamer=streamer,
                                    stopping_criteria=StoppingCriteriaList([Cancelled()]))
        except BaseException as exc:
            failure.append(exc)
            if is_oom(exc):
                release_memory()
            streamer.end()  # unblock the caller's iteration

    def _stream_ids(self, ids: list[int], gen: GenerationConfig, adapter: str | None,
                    fast: bool = False) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        ticket = self._turns.acquire()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        failure: list[BaseException] = []
        target = self._run_fast if fast else self._run_generate

        def work() -> None:
            try:
                target(ids, gen, adapter, streamer, cancel, failure)
            finally:  # the worker frees the model: an abandoned generator that nobody closes cannot keep it
                self._turns.release(ticket)

        try:
            done = self._worker.submit(work)
        except BaseException:
            self._turns.release(ticket)
            raise
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:  # normal end, an error, or the caller closed the generator: stop the worker at its next token
            cancel.set()
            if not self._worker.is_current():  # a generator collected on the worker thread: never wait for itself
                done.wait()
        if failure:
            exc = failure[0]
            if is_oom(exc):
                raise GPUOutOfMemoryError(
                    f"the GPU ran out of memory while answering (prompt {len(ids)} tokens, max_new_tokens "
                    f"{gen.max_new_tokens}); its cache was freed. Shorten the history or the retrieved context "
                    "(answer.history_tokens, answer.context_tokens), lower llm.max_new_tokens, or load the model "
                    "with llm.quantization=int4"
                ) from exc
            raise exc
