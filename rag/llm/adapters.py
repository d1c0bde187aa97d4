"""Loading registered adapters (:mod:`rag.models.adapters`) onto a chat model.

Each adapter is checked against the base model and its chat template first; a ChatGLM3 finetune_demo adapter (LoRA
on the fused ``query_key_value``) is converted once into a cached native q/k/v copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any, Protocol

from rag.core.errors import RagError
from rag.core.paths import cache_root
from rag.llm.base import ModelInfo
from rag.models.adapters import (
    PEFT_CONFIG,
    WEIGHTS,
    AdapterInfo,
    check_adapter,
    find_adapter,
    list_adapters,
    quantization_note,
)

logger = logging.getLogger(__name__)


class AdapterHost(Protocol):
    """What loading adapters needs from a chat model (:class:`rag.llm.hf.model.HFChatModel`)."""

    @property
    def adapters(self) -> tuple[str, ...]: ...

    @property
    def base_config(self) -> Any: ...

    def info(self) -> ModelInfo: ...

    def load_adapter(self, name: str, path: Path) -> None: ...


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256((folder / PEFT_CONFIG).read_bytes())
    stat = (folder / WEIGHTS).stat()
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def prepare_adapter(info: AdapterInfo, cache_dir: str, base_config: Any) -> Path:
    """The folder to hand to peft: the adapter itself, or for a ChatGLM3 finetune_demo adapter its native copy,
    converted once into ``<cache>/adapters-native/<name>-<fingerprint>`` (rebuilt when the adapter changes)."""
    if not info.fused_qkv:
        return info.path
    from rag.llm.glm import convert as chatglm3

    target = cache_root(cache_dir) / "adapters-native" / f"{info.name}-{_fingerprint(info.path)}"
    if (target / WEIGHTS).is_file() and (target / PEFT_CONFIG).is_file():
        return target
    logger.info("converting ChatGLM3 finetune_demo adapter %s to native q/k/v LoRA in %s", info.path, target)
    chatglm3.convert_lora_adapter(info.path, target, base_config)  # writes a temp folder, then swaps it in
    return target


def _checked(model: AdapterHost, info: AdapterInfo) -> AdapterInfo:
    model_info = model.info()
    usable, reason = check_adapter(info, model_info.model_id, model_info.template, model_info.revision)
    return dataclasses.replace(info, usable=usable, reason=reason)


def load_named_adapter(model: AdapterHost, adapters_dir: str | Path, name: str, cache_dir: str = "") -> AdapterInfo:
    """Check the adapter ``name`` against ``model`` and load it (converting a finetune_demo adapter first).

    Raises:
        RagError: the adapter cannot be used here; the message is the reason.
    """
    info = _checked(model, find_adapter(adapters_dir, name))
    if not info.usable:
        raise RagError(f"adapter {name!r} cannot be used: {info.reason}")
    note = quantization_note(info, model.info().extra.get("quantization", ""))
    if note:
        logger.warning(note)
    if name not in model.adapters:
        model.load_adapter(name, prepare_adapter(info, cache_dir, model.base_config))
    return info


def load_usable_adapters(model: AdapterHost, adapters_dir: str | Path, cache_dir: str = "") -> list[AdapterInfo]:
    """Load every usable adapter under ``adapters_dir`` onto ``model``; all infos come back, a failed load as
    unusable with its reason (the UI lists them all)."""
    infos = []
    for listed in list_adapters(adapters_dir):
        info = _checked(model, listed) if listed.usable else listed
        if info.usable and info.name not in model.adapters:
            try:
                model.load_adapter(info.name, prepare_adapter(info, cache_dir, model.base_config))
            except (RagError, OSError, ValueError, RuntimeError, KeyError) as exc:
                info = dataclasses.replace(info, usable=False, reason=f"failed to load: {exc}")
        infos.append(info)
    return infos
