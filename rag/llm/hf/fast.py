"""The fast-decoder side of :class:`rag.llm.hf.model.HFChatModel` (``llm.fast_decode``), as a mixin it inherits.

Deciding per request whether :class:`rag.llm.fastgen.generator.FastGenerator` answers, building and warming it (one per model,
a captured graph per adapter state), falling back to ``generate`` when it cannot be set up, and feeding its tokens
to the streamer one at a time are one concern with its own state (``_fast``, ``_fast_warm``, ``_fast_failure``);
kept here, :mod:`rag.llm.hf.model` reads as the chat model. The methods run on an ``HFChatModel`` (the annotations below
name what they use of it) and log under ``rag.llm.hf.model``, the chat model's logger, as they did when they lived there.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from rag.core.device import is_oom, release_memory
from rag.core.errors import ConfigError, RagError
from rag.core.types import Message
from rag.llm.base import GenerationConfig

logger = logging.getLogger("rag.llm.hf.model")  # the records belong to HFChatModel, whose methods these are

FAST_DECODE = ("auto", "on", "off")
FAST_DECODE_MODEL_TYPES = ("glm", "llama", "qwen2")  # llm.fast_decode=auto uses the fast decoder for these, on CUDA


class FastDecodeMixin:
    """``llm.fast_decode`` for :class:`rag.llm.hf.model.HFChatModel` (see that module's docstring)."""

    # provided by HFChatModel
    _FAST_BACKEND: str
    model: Any
    tokenizer: Any
    model_id: str
    quantization: str
    context_window: int
    stop_token_ids: list[int]
    fast_decode: str
    _fast: Any
    _fast_warm: set[tuple[str | None, bool]]
    _fast_failure: str
    default_gen: GenerationConfig

    @property
    def base_config(self) -> Any:
        raise NotImplementedError

    def _adapter_scope(self, adapter: str | None) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def stream(self, messages: Sequence[Message], gen: GenerationConfig | None = None, adapter: str | None = None,
               context: Sequence[Any] = ()) -> Iterator[str]:
        raise NotImplementedError

    def _run_generate(self, ids: list[int], gen: GenerationConfig, adapter: str | None, streamer: Any,
                      cancel: threading.Event, failure: list[BaseException]) -> None:
        raise NotImplementedError

    def _uses_fast(self, gen: GenerationConfig) -> bool:
        """Whether this request goes through the fast decoder (decided before queueing; see ``llm.fast_decode``)."""
        if self.fast_decode == "off" or self._fast_failure:
            return False
        if gen.repetition_penalty != 1.0:  # FastGenerator samples from the raw logits
            if self.fast_decode == "on":
                raise ConfigError(f"llm.fast_decode=on cannot apply repetition_penalty={gen.repetition_penalty}; "
                                  "set llm.repetition_penalty=1.0, or llm.fast_decode=auto to use generate for it")
            return False
        if self.fast_decode == "on":
            return True
        return (str(self.model.device).startswith("cuda") and not self.quantization
                and getattr(self.base_config, "model_type", "") in FAST_DECODE_MODEL_TYPES)

    def warm_up(self, adapter: str | None = None) -> bool:
        """Build the fast decoder and capture its greedy graph for ``adapter`` now, through the normal request queue
        (a 2-token answer), so that the first user does not wait for it (~15 s for a 6B model on an H100). Returns
        whether anything was warmed: False when requests would not use the fast decoder (CPU, ``fast_decode=off``,
        a quantized model, or it already failed once)."""
        gen = replace(self.default_gen, max_new_tokens=2, temperature=0.0, repetition_penalty=1.0)
        if not self._uses_fast(gen) or (adapter, False) in self._fast_warm:
            return False
        for _ in self.stream([Message(role="user", content="你好")], gen, adapter):
            pass
        return (adapter, False) in self._fast_warm

    def _fast_state(self) -> str:
        if self._fast is not None:
            attention = f", {self._fast.attention} attention" if self._fast.backend != "hf" else ""
            return f"{self._fast.backend}{attention}"
        return f"unavailable: {self._fast_failure}" if self._fast_failure else self.fast_decode

    def _drop_fast(self) -> None:
        """Forget the fast decoder (call holding the turn); the next request that uses it builds a new one."""
        if self._fast is not None:
            self._fast = None
            self._fast_warm.clear()
            release_memory()  # its KV cache and graph pools

    def _warm_fast(self, adapter: str | None, sample: bool, probe: list[int]) -> Any:
        """The fast decoder, with the graph of this (adapter state, greedy/sampling) captured: any setup error
        surfaces here, before a token reaches the caller. Runs in the worker thread inside the adapter scope."""
        if self._fast is None:
            from rag.llm.fastgen.generator import FastGenerator

            self._fast = FastGenerator(self.model, max_batch=1, max_len=self.context_window,
                                       backend=self._FAST_BACKEND)
            logger.info("fast decoder for %s: %s", self.model_id, self._fast_state())
        if (adapter, sample) not in self._fast_warm:  # first use: capture (and the first time, compile) the step
            for _ in self._fast.generate(probe, max_new_tokens=2, temperature=1.0 if sample else 0.0):
                pass
            self._fast_warm.add((adapter, sample))
        return self._fast

    def _run_fast(self, ids: list[int], gen: GenerationConfig, adapter: str | None, streamer: Any,
                  cancel: threading.Event, failure: list[BaseException]) -> None:
        """Worker thread body with the fast decoder; its setup failing falls back to :meth:`_run_generate` (auto)
        or ends the stream with a RagError (on)."""
        import torch

        if self._fast_failure:  # an earlier request in the queue found it broken
            self._run_generate(ids, gen, adapter, streamer, cancel, failure)
            return
        try:
            with self._adapter_scope(adapter):
                fast = self._warm_fast(adapter, gen.temperature > 0, ids[:8])
        except Exception as exc:  # no compiler, a layer it cannot run, a graph capture that failed, ...
            self._drop_fast()
            if self.fast_decode == "on":
                error = RagError(f"llm.fast_decode=on, but the fast decoder could not be set up ({type(exc).__name__}: "
                                 f"{exc}); set llm.fast_decode=auto to answer with transformers' generate instead")
                error.__cause__ = exc
                failure.append(error)
                streamer.end()
                return
            self._fast_failure = f"{type(exc).__name__}: {exc}"
            logger.warning("fast decoding is unavailable (%s); answering with transformers' generate from now on",
                           self._fast_failure)
            self._run_generate(ids, gen, adapter, streamer, cancel, failure)
            return
        try:
            with self._adapter_scope(adapter):
                if gen.seed is not None:
                    torch.manual_seed(gen.seed)
                self._decode_fast(fast, ids, gen, streamer, cancel)
        except BaseException as exc:
            failure.append(exc)
            if is_oom(exc):
                release_memory()
        streamer.end()

    def _decode_fast(self, fast: Any, ids: list[int], gen: GenerationConfig, streamer: Any,
                     cancel: threading.Event) -> None:
        """Feed the fast decoder's tokens to ``streamer`` one at a time, as ``generate`` does (same text pieces)."""
        import torch

        # FastGenerator drops the stop token it stops at: fine for tokens without text (eos, role tokens); a stop
        # token with text is shown by generate, so that one is passed through and stopped at here
        silent = [i for i in self.stop_token_ids if self.tokenizer.decode([i], skip_special_tokens=True) == ""]
        shown = set(self.stop_token_ids) - set(silent)
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
