"""Loading a local transformers chat model for :class:`rag.llm.hf.model.HFChatModel`: where it comes from and how it loads.

Resolution (local folder, caches, hubs through :func:`rag.models.hub.resolve_model`), the ChatGLM3 -> native GLM copy, the
device / dtype / quantization choices, the remote-code policy and the chat template all decide *what* is loaded,
before any generation runs; they live here so that :mod:`rag.llm.hf.model` reads as the chat model itself. The helpers
are also used on their own (``finetune``, ``rag.cli.models``, ``rag.embed.embedder``), which is why they are plain functions.
Out-of-memory recognition is here too: loading and generating both turn a full GPU into
:class:`GPUOutOfMemoryError`. Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.core.config import LLMConfig
from rag.core.device import is_oom, pick_device, pick_dtype
from rag.core.errors import ConfigError, ModelUnavailableError, RagError
from rag.core.paths import cache_root
from rag.models import hub
from rag.models.ids import is_model_folder

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("", "int8", "int4", "nf4", "4bit", "8bit")
BNB_QUANTIZATIONS = ("nf4", "4bit", "8bit")  # bitsandbytes (transformers' forward); int8/int4: rag.llm.hf.quantized


class GPUOutOfMemoryError(RagError):
    """The accelerator ran out of memory while answering; its cache has been freed."""


def quantization_config(kind: str, device: str, compute_dtype: Any) -> Any:
    """A ``BitsAndBytesConfig`` for ``llm.quantization`` (None when empty); clear errors when it cannot work here."""
    if kind not in QUANTIZATIONS:
        raise ConfigError(f"llm.quantization={kind!r} is not one of '', {', '.join(QUANTIZATIONS[1:])}")
    if kind not in BNB_QUANTIZATIONS:
        return None
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
    if not is_model_folder(Path(cfg.model).expanduser()) or not cfg.revision:
        raise ConfigError(
            "llm.trust_remote_code=true runs Python code shipped with the model; it is allowed only for a local "
            "folder (llm.model=/path/to/model) with llm.revision set to the commit whose code you reviewed. "
            "ChatGLM3 needs no remote code: its checkpoint is converted to native GLM"
        )
    return True


def native_folder(path: Path, cache_dir: str) -> Path:
    """A ChatGLM3 checkpoint -> its native GLM copy in our cache (converted once); any other folder as is."""
    from rag.llm.glm import convert as chatglm3

    if chatglm3.is_chatglm3_checkpoint(path):
        logger.info("ChatGLM3 checkpoint %s: using its native GLM copy", path)
        return Path(chatglm3.ensure_native(path, cache_root(cache_dir)))
    return path


def chat_template_for(tokenizer: Any) -> tuple[str, Any]:
    """(template name, rag.models.templates template or None): the project's template when it recognises the tokenizer,
    else the tokenizer's own ``chat_template`` (named ``tokenizer``)."""
    from rag.models import templates

    name = templates.detect_template(tokenizer)
    if name:
        return name, templates.get_template(name)
    if getattr(tokenizer, "chat_template", None):
        return "tokenizer", None
    raise ModelUnavailableError("the model's tokenizer has no chat template and none of rag.models.templates matches it; "
                                "use a chat (instruct) model, not a base model")


def load_pretrained(cfg: LLMConfig, network: bool = True) -> tuple[Any, Any, str, str, Any]:
    """(model, tokenizer, origin, device, dtype) for ``cfg``: resolved, converted and loaded as
    :meth:`rag.llm.hf.model.HFChatModel.load` describes (which wraps them into the chat model).

    Raises:
        ModelUnavailableError: the model is nowhere to be had, or its folder does not load.
        ConfigError: a setting cannot work here (dtype, quantization without CUDA / bitsandbytes, remote code).
        GPUOutOfMemoryError: the weights do not fit on the device.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, origin, trust, device, dtype = resolve(cfg, network)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True, "trust_remote_code": trust}
    if (quant := quantization_config(cfg.quantization, device, dtype)) is not None:
        kwargs["quantization_config"] = quant
    if device != "cpu":
        kwargs["device_map"] = {"": device}  # weights go straight to the accelerator, not via host memory
    with load_errors(cfg, folder, device, dtype):
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    return model, tokenizer, origin, device, dtype


def resolve(cfg: LLMConfig, network: bool = True) -> tuple[Path, str, bool, str, Any]:
    """(folder to load, origin, remote code allowed, device, dtype) for ``cfg``: found, converted, checked."""
    trust = remote_code_allowed(cfg)
    path, origin = hub.resolve_model(cfg.model, revision=cfg.revision, source=cfg.source,
                                     modelscope_id=cfg.modelscope_id, cache_dir=cfg.cache_dir,
                                     timeout_s=cfg.hub_timeout_s, kind="language model", section="llm",
                                     network=network)
    folder = native_folder(path, cfg.cache_dir)
    trust = trust and folder == path  # the native copy has no code of its own
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    return folder, origin, trust, device, dtype


@contextlib.contextmanager
def load_errors(cfg: LLMConfig, folder: Path, device: str, dtype: Any) -> Iterator[None]:
    """Loading errors as the project's errors, each naming the fix."""
    try:
        yield
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
        if not is_oom(exc):
            raise
        raise GPUOutOfMemoryError(
            f"not enough memory on {device} to load {cfg.model} in {str(dtype).removeprefix('torch.')}; "
            "free the GPU, or set llm.quantization=int4 (about a third of the memory)"
        ) from exc
