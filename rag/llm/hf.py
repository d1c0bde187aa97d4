"""A local transformers chat model (ChatGLM3 through native GLM, or any HF chat model) with LoRA adapters.

One :class:`HFChatModel` holds one base model on one device and any number of peft LoRA adapters on top of it.
Requests are served **one at a time, first come first served**: :meth:`HFChatModel.stream` takes a ticket when the
caller starts iterating and keeps the model until the answer ends or the caller stops iterating (closing the
generator cancels the generation). Others wait their turn; :meth:`HFChatModel.queue_depth` says how many wait.
The adapter of a request (or "adapters disabled" for the base model) is switched while holding the model, so
concurrent requests with different adapters never mix.

Generation runs in a background thread that feeds transformers' ``TextIteratorStreamer``; the caller's thread
yields the text pieces. With ``llm.fast_decode`` (``auto``: on CUDA for unquantised GLM / Llama / Qwen2 models) that
thread runs :class:`rag.llm.fastgen.FastGenerator` (CUDA-graph decode steps) instead of ``model.generate``: built by
the first request (~15 s for ChatGLM3-6B on an H100: compile + capture), one per model, a captured graph per adapter
state, rebuilt after an adapter loads; the streamer gets its tokens one at a time, as ``generate`` feeds them, so the
text pieces are the same. If it cannot be set up, ``auto`` logs a warning once and answers with ``generate`` from then
on; ``on`` raises. Prompts come from :mod:`rag.templates` when the chat template is known, else from the
tokenizer's own ``chat_template``. Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rag import hub
from rag.config import LLMConfig
from rag.e5build import cache_root
from rag.errors import ConfigError, ModelUnavailableError, RagError
from rag.llm.base import GenerationConfig, ModelInfo
from rag.types import Hit, Message

logger = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("", "4bit", "8bit")
FAST_DECODE = ("auto", "on", "off")
FAST_DECODE_MODEL_TYPES = ("glm", "llama", "qwen2")  # llm.fast_decode=auto uses the fast decoder for these, on CUDA
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class PromptTooLongError(RagError):
    """The prompt plus ``max_new_tokens`` does not fit the model's context window."""


class GPUOutOfMemoryError(RagError):
    """The accelerator ran out of memory while answering; its cache has been freed."""


class FifoTurns:
    """A first-come-first-served lock: callers get tickets and run in ticket order (``threading.Lock`` is unfair)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0  # handed to the next caller
        self._serving = 0  # the ticket that may run now
        self._abandoned: set[int] = set()  # tickets whose caller gave up waiting (interrupted)

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this caller's turn, hold it for the ``with`` body, then hand it to the next ticket."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                self._cond.wait_for(lambda: self._serving == ticket)
            except BaseException:  # interrupted while waiting: never block the tickets behind this one
                if self._serving == ticket:
                    self._advance()
                else:
                    self._abandoned.add(ticket)
                raise
        try:
            yield
        finally:
            with self._cond:
                self._advance()

    def waiting(self) -> int:
        """Callers waiting for their turn (not counting the one running)."""
        with self._cond:
            return max(0, self._next_ticket - self._serving - len(self._abandoned) - 1)


def pick_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``mps`` on Apple silicon, else ``cpu``."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"llm.device={device} but torch sees no CUDA GPU; use llm.device=auto or cpu")
    return device


def pick_dtype(name: str, device: str) -> Any:
    """``auto``: bfloat16 on CUDA compute capability >= 8 (Ampere+), float16 on older GPUs (V100, T4) and MPS,
    float32 on CPU (half precision there is slow and loses accuracy)."""
    import torch

    if name not in DTYPES:
        raise ConfigError(f"llm.dtype={name!r} is not one of {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda"):
        major, _ = torch.cuda.get_device_capability(torch.device(device))
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.float16 if device == "mps" else torch.float32


def quantization_config(kind: str, device: str, compute_dtype: Any) -> Any:
    """A ``BitsAndBytesConfig`` for ``llm.quantization`` (None when empty); clear errors when it cannot work here."""
    if not kind:
        return None
    if kind not in QUANTIZATIONS:
        raise ConfigError(f"llm.quantization={kind!r} is not one of '', 4bit, 8bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"llm.quantization={kind} needs bitsandbytes: pip install bitsandbytes "
                          "(or set llm.quantization= to load the model unquantised)")
    if not device.startswith("cuda"):
        raise ConfigError(f"llm.quantization={kind} needs a CUDA GPU, but the model runs on {device}; "
                          "set llm.quantization= (empty) there")
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def remote_code_allowed(cfg: LLMConfig) -> bool:
    """``llm.trust_remote_code`` runs Python shipped with a model: only for a local folder at a pinned revision."""
    if not cfg.trust_remote_code:
        return False
    if not hub.is_model_folder(Path(cfg.model).expanduser()) or not cfg.revision:
        raise ConfigError(
            "llm.trust_remote_code=true runs Python code shipped with the model; it is allowed only for a local "
            "folder (llm.model=/path/to/model) with llm.revision set to the commit whose code you reviewed. "
            "ChatGLM3 needs no remote code: its checkpoint is converted to native GLM"
        )
    return True


def native_folder(path: Path, cache_dir: str) -> Path:
    """A ChatGLM3 checkpoint -> its native GLM copy in our cache (converted once); any other folder as is."""
    try:
        chatglm3 = importlib.import_module("rag.llm.chatglm3")  # written alongside; optional until it lands
    except ModuleNotFoundError as exc:
        if exc.name != "rag.llm.chatglm3":
            raise
        return path
    if chatglm3.is_chatglm3_checkpoint(path):
        logger.info("ChatGLM3 checkpoint %s: using its native GLM copy", path)
        return Path(chatglm3.ensure_native(path, cache_root(cache_dir)))
    return path


def chat_template_for(tokenizer: Any) -> tuple[str, Any]:
    """(template name, rag.templates template or None): the project's template when it recognises the tokenizer,
    else the tokenizer's own ``chat_template`` (named ``tokenizer``)."""
    templates: Any = None
    try:
        templates = importlib.import_module("rag.templates")
    except ModuleNotFoundError as exc:
        if exc.name != "rag.templates":
            raise
    name = templates.detect_template(tokenizer) if templates is not None else None
    if name:
        return name, templates.get_template(name)
    if getattr(tokenizer, "chat_template", None):
        return "tokenizer", None
    raise ModelUnavailableError("the model's tokenizer has no chat template and none of rag.templates matches it; "
                                "use a chat (instruct) model, not a base model")


# how a full GPU shows up besides torch.OutOfMemoryError: cuBLAS / cuDNN failing to get workspace (seen on an H100
# filled to the last 2 MiB: SDPA's cuDNN backend raised "mha_graph.execute(...).is_good()" instead of an OOM)
_OOM_MARKERS = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed", "mha_graph.execute")


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc).lower() for marker in _OOM_MARKERS)


def _release_memory() -> None:
    """Give the accelerator's cached blocks back (after an out-of-memory error, or dropping the fast decoder)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class HFChatModel:
    """A transformers causal LM + tokenizer (+ peft LoRA adapters) behind the :class:`rag.llm.base.ChatModel` protocol.

    Build it with :meth:`load`; the constructor takes objects already loaded (tests, notebooks, benchmarks).
    ``fast_decode`` is ``llm.fast_decode``: auto | on | off (see the module docstring).
    """

    _FAST_BACKEND = "auto"  # FastGenerator's backend; tests set "eager" to run its static-cache step on the CPU

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str, revision: str = "", context_window: int = 0,
                 default_gen: GenerationConfig | None = None, origin: str = "", quantization: str = "",
                 fast_decode: str = "auto") -> None:
        if fast_decode not in FAST_DECODE:
            raise ConfigError(f"llm.fast_decode={fast_decode!r} is not one of {', '.join(FAST_DECODE)}")
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
        self._fast: Any = None  # the FastGenerator, built by the first request that uses it (under the FIFO turn)
        self._fast_warm: set[tuple[str | None, bool]] = set()  # (adapter, sampling) states whose graph is captured
        self._fast_failure = ""  # why fast_decode=auto gave up on the fast decoder (warned once)

    # --- loading ------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, cfg: LLMConfig, network: bool = True) -> HFChatModel:
        """Resolve ``cfg.model`` (local folder, caches, hubs unless ``network`` is False), convert a ChatGLM3 checkpoint to native GLM once, and
        load it in eval mode on ``cfg.device`` with ``cfg.dtype`` / ``cfg.quantization``; then ``cfg.adapter``, if set.

        Raises:
            ModelUnavailableError: the model is nowhere to be had, or its folder does not load.
            ConfigError: a setting cannot work here (dtype, quantization without CUDA / bitsandbytes, remote code).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        trust = remote_code_allowed(cfg)
        path, origin = hub.resolve_model(cfg.model, revision=cfg.revision, source=cfg.source,
                                         modelscope_id=cfg.modelscope_id, cache_dir=cfg.cache_dir,
                                         timeout_s=cfg.hub_timeout_s, kind="language model", section="llm",
                                         network=network)
        folder = native_folder(path, cfg.cache_dir)
        trust = trust and folder == path  # the native copy has no code of its own
        device = pick_device(cfg.device)
        dtype = pick_dtype(cfg.dtype, device)
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True, "trust_remote_code": trust}
        if (quant := quantization_config(cfg.quantization, device, dtype)) is not None:
            kwargs["quantization_config"] = quant
        if device != "cpu":
            kwargs["device_map"] = {"": device}  # weights go straight to the accelerator, not via host memory
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
            model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise ConfigError(
                    f"{folder} needs Python code shipped with the model (auto_map in config.json); after reviewing "
                    "it, set llm.trust_remote_code=true with llm.model pointing at that local folder and "
                    "llm.revision pinned"
                ) from exc
            raise ModelUnavailableError(f"language model folder {folder} could not be loaded: {exc}") from exc
        except (OSError, KeyError) as exc:
            raise ModelUnavailableError(f"language model folder {folder} could not be loaded: {exc}") from exc
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            raise GPUOutOfMemoryError(
                f"not enough memory on {device} to load {cfg.model} in {str(dtype).removeprefix('torch.')}; "
                "free the GPU, or set llm.quantization=4bit (about a quarter of the memory)"
            ) from exc
        chat = cls(model, tokenizer, model_id=cfg.model, revision=cfg.revision, context_window=cfg.context_window,
                   default_gen=GenerationConfig.from_llm(cfg), origin=origin, quantization=cfg.quantization,
                   fast_decode=cfg.fast_decode)
        logger.info("loaded %s from %s on %s (%s), template %s", cfg.model, origin, device, dtype, chat.template_name)
        if cfg.adapter:
            from rag.adapters import load_named_adapter

            load_named_adapter(chat, cfg.adapters_dir, cfg.adapter, cache_dir=cfg.cache_dir)
        return chat

    def load_adapter(self, name: str, path: Path) -> None:
        """Load a peft LoRA adapter folder onto this base model (no base reload); several adapters can coexist.

        Waits for the running generation, if any. Only ``adapter_model.safetensors`` is read (never a pickle).
        Use :func:`rag.adapters.load_named_adapter` to check the adapter's metadata against this model first.
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
            self._drop_fast()  # its graphs and fused LoRA weights were made for the old set of adapters
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
            raise RagError(f"adapter {adapter!r} is not loaded (loaded: {loaded}); see rag.adapters.list_adapters")
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
                   "fast_decode": self._fast_state()},
        )

    # --- generation ---------------------------------------------------------------------------------------------

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
            if _is_oom(exc):
                _release_memory()
            streamer.end()  # unblock the caller's iteration

    # --- the fast decoder (rag.llm.fastgen) ----------------------------------------------------------------------

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
            _release_memory()  # its KV cache and graph pools

    def _warm_fast(self, adapter: str | None, sample: bool, probe: list[int]) -> Any:
        """The fast decoder, with the graph of this (adapter state, greedy/sampling) captured: any setup error
        surfaces here, before a token reaches the caller. Runs in the worker thread inside the adapter scope."""
        if self._fast is None:
            from rag.llm.fastgen import FastGenerator

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
            if _is_oom(exc):
                _release_memory()
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

    def _stream_ids(self, ids: list[int], gen: GenerationConfig, adapter: str | None,
                    fast: bool = False) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        with self._turns.turn():
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            cancel = threading.Event()
            failure: list[BaseException] = []
            target = self._run_fast if fast else self._run_generate
            worker = threading.Thread(target=target, args=(ids, gen, adapter, streamer, cancel, failure),
                                      name="hf-generate", daemon=True)
            worker.start()
            try:
                for piece in streamer:
                    if piece:
                        yield piece
            finally:  # normal end, an error, or the caller closed the generator: stop and wait for the worker
                cancel.set()
                worker.join()
        if failure:
            exc = failure[0]
            if _is_oom(exc):
                raise GPUOutOfMemoryError(
                    f"the GPU ran out of memory while answering (prompt {len(ids)} tokens, max_new_tokens "
                    f"{gen.max_new_tokens}); its cache was freed. Shorten the history or the retrieved context "
                    "(answer.history_tokens, answer.context_tokens), lower llm.max_new_tokens, or load the model "
                    "with llm.quantization=4bit"
                ) from exc
            raise exc
