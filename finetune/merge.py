"""Merge a LoRA adapter into its base model's weights: ``python -m finetune merge --adapter NAME --output DIR``.

The base model comes from the adapter's ``rag_adapter.json`` (or ``--base``) and is found and converted exactly as
the app and the recipe find it; the adapter is checked first (same base, same chat template) with the app's own
registry rules. The output is a plain transformers folder: safetensors weights, the tokenizer with its chat
template, and ``kbqa_merge.json`` saying what was merged. Serve it with ``llm.model=DIR`` (no adapter needed), or
hand it to vLLM / any tool that reads Hugging Face folders. Written to ``DIR.partial`` first, then renamed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rag.core.errors import ConfigError
from rag.llm.adapters import prepare_adapter
from rag.models import hub
from rag.models.adapters import AdapterInfo, check_adapter, find_adapter
from rag.models.templates import detect_template

logger = logging.getLogger(__name__)

MERGE_RECORD = "kbqa_merge.json"


@dataclass(frozen=True)
class LoadedBase:
    """A base model folder ready to load, with the identity its adapters are checked against."""

    model_id: str
    revision: str
    folder: Path


def locate_adapter(adapter: str, adapters_dir: str | Path = "adapters") -> AdapterInfo:
    """An adapter by registry name (``adapters/<name>``) or by folder path; ConfigError if it can't be used."""
    path = Path(adapter).expanduser()
    if "/" in adapter and path.is_dir():  # a folder path; a bare name is looked up in the registry
        info = find_adapter(path.parent, path.name)
    else:
        info = find_adapter(adapters_dir, adapter)
    if not info.usable or info.metadata is None:
        raise ConfigError(f"adapter {adapter!r} cannot be used: {info.reason}")
    return info


def base_for(info: AdapterInfo, base: str = "", source: str = "auto", cache_dir: str = "~/.cache/kbqa/models",
             network: bool = True) -> LoadedBase:
    """Find the adapter's base model (``base`` overrides the recorded one), convert ChatGLM3 to native, and check the
    adapter against it with the app's rules (same model id and revision, same chat template)."""
    from transformers import AutoTokenizer

    from rag.llm.hf.load import native_folder

    assert info.metadata is not None
    model_id = base or info.metadata.base_model
    revision = info.metadata.base_revision if not base else ""
    path, _ = hub.resolve_model(model_id, revision=revision, source=source, cache_dir=cache_dir,
                                kind="base model", section="model", network=network)
    folder = native_folder(path, cache_dir)
    template = detect_template(AutoTokenizer.from_pretrained(str(folder), local_files_only=True)) or "unknown"
    usable, reason = check_adapter(info, model_id, template, revision)
    if not usable:
        raise ConfigError(f"adapter {info.name!r} does not fit {model_id}: {reason}")
    return LoadedBase(model_id, revision, folder)


def merge_adapter(adapter: str, output: str | Path, adapters_dir: str | Path = "adapters", base: str = "",
                  dtype: str = "auto", source: str = "auto", cache_dir: str = "~/.cache/kbqa/models") -> Path:
    """Write base + adapter merged into ``output``; returns it.

    Args:
        adapter: registry name or adapter folder.
        output: the new model folder (must not exist).
        adapters_dir: the registry, for names.
        base: the base model to merge into ("" = the one in rag_adapter.json).
        dtype: auto (the checkpoint's own) | bfloat16 | float16 | float32.
        source: where the base may come from (auto | local | modelscope | huggingface).
        cache_dir: the model cache.

    Raises:
        ConfigError: the output exists, the adapter is unusable or does not fit the base, or a bad dtype.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = Path(output).expanduser()
    if output.exists():
        raise ConfigError(f"--output {output} already exists; choose a new folder")
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise ConfigError(f"--dtype {dtype} is not one of auto, bfloat16, float16, float32")
    info = locate_adapter(adapter, adapters_dir)
    loaded = base_for(info, base, source, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(str(loaded.folder), local_files_only=True,
                                                 dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    adapter_folder = prepare_adapter(info, cache_dir, model.config)
    merged = PeftModel.from_pretrained(model, str(adapter_folder)).merge_and_unload()
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(str(partial), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(loaded.folder), local_files_only=True).save_pretrained(str(partial))
    assert info.metadata is not None
    record = {"adapter": info.name, "adapter_path": str(info.path), "base_model": loaded.model_id,
              "base_revision": loaded.revision, "template": info.metadata.template,
              "merged": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (partial / MERGE_RECORD).write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, output)
    logger.info("merged %s into %s -> %s", info.name, loaded.model_id, output)
    return output
