"""The fast decoder of :class:`rag.llm.hf.model.HFChatModel` (``llm.fast_decode``), a collaborator the chat model owns.

Deciding per request whether :class:`rag.llm.fastgen.generator.FastGenerator` answers, building and warming it (one
per model, a captured graph per adapter state), falling back to ``generate`` when it cannot be set up, and feeding its
tokens to the streamer one at a time are one concern with its own state (the generator, the warm states, why it
failed); :class:`FastDecoder` keeps that state, and the chat model passes what changes per request (its current
model, the adapter scope, the fallback) as arguments, so :mod:`rag.llm.hf.model` reads as the chat model.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from rag.core.device import is_oom, release_memory
from rag.core.errors import ConfigError, RagError
from rag.llm.base import GenerationConfig
from rag.llm.hf.quantized import check_settings

logger = logging.getLogger(__name__)

FAST_DECODE = ("auto", "on", "off")
FAST_DECODE_MODEL_TYPES = ("glm", "llama", "qwen2")  # llm.fast_decode=auto uses the fast decoder for these, on CUDA


class FastDecoder:
    """``llm.fast_decode`` for one chat model (see :mod:`rag.llm.hf.model`).

    Args:
        mode: ``llm.fast_decode``: auto | on | off.
        model_id: for the log.
        context_window: the generator's cache length.
        tokenizer: the chat model's tokenizer (to tell stop tokens with text from silent ones).
        quantize: ``int8`` | ``int4`` when the model's linears are served quantized (``quantized``, by name; their
            own weights are freed): every request goes through the fast decoder, which has no fallback then.
    """

    def __init__(self, mode: str, *, model_id: str, context_window: int, tokenizer: Any, quantize: str = "",
                 quantized: dict[str, Any] | None = None) -> None:
        if mode not in FAST_DECODE:
            raise ConfigError(f"llm.fast_decode={mode!r} is not one of {', '.join(FAST_DECODE)}")
        if quantize:
            check_settings(quantize, fast_decode=mode)
        self.mode, self.model_id, self.context_window = mode, model_id, context_window
        self.tokenizer = tokenizer
        self.quantize, self.quantized = quantize, quantized
        self.generator: Any = None  # the FastGenerator, built by the first request that uses it (under the FIFO turn)
        self.warm: set[tuple[str | None, bool]] = set()  # (adapter, sampling) states whose graph is captured
        self.failure = ""  # why fast_decode=auto gave up on the fast decoder (warned once)

    def wanted(self, gen: GenerationConfig, *, device: str, quantized: bool, model_type: str) -> bool:
        """Whether this request goes through the fast decoder (decided before queueing; see ``llm.fast_decode``)."""
        if self.quantize:
            if gen.repetition_penalty != 1.0:
                raise ConfigError(f"llm.quantization={self.quantize} answers through the fast decoder, which cannot "
                                  f"apply repetition_penalty={gen.repetition_penalty}; set llm.repetition_penalty=1.0")
            return True
        if self.mode == "off" or self.failure:
            return False
        if gen.repetition_penalty != 1.0:  # FastGenerator samples from the raw logits
            if self.mode == "on":
                raise ConfigError(f"llm.fast_decode=on cannot apply repetition_penalty={gen.repetition_penalty}; "
                                  "set llm.repetition_penalty=1.0, or llm.fast_decode=auto to use generate for it")
            return False
        if self.mode == "on":
            return True
        return device.startswith("cuda") and not quantized and model_type in FAST_DECODE_MODEL_TYPES

    def state(self) -> str:
        """What ``info().extra["fast_decode"]`` shows: the backend built, why it is unavailable, or the mode."""
        if self.generator is not None:
            attention = f", {self.generator.attention} attention" if self.generator.backend != "hf" else ""
            return f"{self.generator.backend}{attention}"
        return f"unavailable: {self.failure}" if self.failure else self.mode

    def drop(self) -> None:
        """Forget the generator (call holding the model's turn); the next request that uses it builds a new one."""
        if self.generator is not None:
            self.generator = None
            self.warm.clear()
            release_memory()  # its KV cache and graph pools

    def _warmed(self, model: Any, backend: str, adapter: str | None, sample: bool, probe: list[int]) -> Any:
        """The generator, with the graph of this (adapter state, greedy/sampling) captured: any setup error
        surfaces here, before a token reaches the caller. Runs in the worker thread inside the adapter scope."""
        if self.generator is None:
            from rag.llm.fastgen.generator import FastGenerator

            self.generator = FastGenerator(model, max_batch=1, max_len=self.context_window, backend=backend,
                                           quantize=self.quantize, quantized=self.quantized)
            logger.info("fast decoder for %s: %s", self.model_id, self.state())
        if (adapter, sample) not in self.warm:  # first use: capture (and the first time, compile) the step
            for _ in self.generator.generate(probe, max_new_tokens=2, temperature=1.0 if sample else 0.0):
                pass
            self.warm.add((adapter, sample))
        return self.generator

    def run(self, model: Any, backend: str, ids: list[int], gen: GenerationConfig, adapter: str | None,
            adapter_scope: Callable[[], contextlib.AbstractContextManager[Any]], stop_token_ids: list[int],
            streamer: Any, cancel: threading.Event, failure: list[BaseException], fallback: Callable[[], None]) -> None:
        """Worker thread body: answer ``ids`` into ``streamer`` with the fast decoder; an error is stored in
        ``failure`` and ends the stream. Its setup failing calls ``fallback`` (generate; auto) or ends the stream
        with a RagError (on).

        Args:
            model: the chat model's current model (a PeftModel once adapters load).
            backend: FastGenerator's backend ("auto"; tests pass "eager" to run its static-cache step on the CPU).
            adapter_scope: enters the request's adapter state (called once for the set-up, once for decoding).
            stop_token_ids: the chat model's stop tokens.
        """
        import torch

        if self.failure:  # an earlier request in the queue found it broken
            fallback()
            return
        try:
            with adapter_scope():
                fast = self._warmed(model, backend, adapter, gen.temperature > 0, ids[:8])
        except Exception as exc:  # no compiler, a layer it cannot run, a graph capture that failed, ...
            self.drop()
            if self.quantize or self.mode == "on":  # quantized: the model's own weights are gone, nothing else can answer
                why = f"{type(exc).__name__}: {exc}"
                error = RagError(
                    f"llm.quantization={self.quantize} needs the fast decoder, which could not be set up ({why}); set "
                    "llm.quantization=nf4 or empty" if self.quantize else
                    f"llm.fast_decode=on, but the fast decoder could not be set up ({why}); set llm.fast_decode=auto "
                    "to answer with transformers' generate instead")
                error.__cause__ = exc
                failure.append(error)
                streamer.end()
                return
            self.failure = f"{type(exc).__name__}: {exc}"
            logger.warning("fast decoding is unavailable (%s); answering with transformers' generate from now on",
                           self.failure)
            fallback()
            return
        try:
            with adapter_scope():
                if gen.seed is not None:
                    torch.manual_seed(gen.seed)
                self._decode(fast, ids, gen, stop_token_ids, streamer, cancel)
        except BaseException as exc:
            failure.append(exc)
            if is_oom(exc):
                release_memory()
        streamer.end()

    def _decode(self, fast: Any, ids: list[int], gen: GenerationConfig, stop_token_ids: list[int], streamer: Any,
                cancel: threading.Event) -> None:
        """Feed the fast decoder's tokens to ``streamer`` one at a time, as ``generate`` does (same text pieces)."""
        import torch

        # FastGenerator drops the stop token it stops at: fine for tokens without text (eos, role tokens); a stop
        # token with text is shown by generate, so that one is passed through and stopped at here
        silent = [i for i in stop_token_ids if self.tokenizer.decode([i], skip_special_tokens=True) == ""]
        shown = set(stop_token_ids) - set(silent)
        streamer.put(torch.tensor([ids]))  # the prompt, which the streamer skips (skip_prompt=True)
        chunks = fast.generate(ids, max_new_tokens=gen.max_new_tokens, stop_ids=silent,
                               temperature=gen.temperature, top_p=gen.top_p if gen.temperature > 0 else 1.0)
        try:
            for chunk in chunks:  # the first token after prefill, then fast.chunk_tokens at a time
                for token in chunk:
                    streamer.put(torch.tensor([token]))
                    if token in shown:
                        return
                if cancel.is_set():  # the caller stopped reading: no more decode steps
                    return
        finally:
            chunks.close()
