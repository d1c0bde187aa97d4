"""Which base model and chat template a finetune run uses: found on disk / in the caches, or the tiny test model built."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config import ModelSection
from rag.core.errors import ConfigError, ModelUnavailableError
from rag.core.paths import cache_root
from rag.models import hub
from rag.models.ids import cache_folder_name, folder_model_id, is_hub_id
from rag.models.templates import ChatTemplate, detect_template, get_template

logger = logging.getLogger(__name__)


@dataclass
class BaseModel:
    """The base model as the app will see it: ``model_id`` is what rag_adapter.json records (compared with the app's
    ``llm.model`` through :func:`rag.models.hub.canonical_model_id`); ``folder`` is what is loaded (a native copy for
    ChatGLM3)."""

    model_id: str
    revision: str
    folder: Path
    origin: str


def recorded_model_id(name_or_path: str, folder: Path) -> str:
    """The base model id to record: a hub-style name as given (that is what the app's ``llm.model`` holds), else the
    id the local folder says it came from, else its absolute path."""
    if is_hub_id(name_or_path):
        return name_or_path
    return folder_model_id(folder) or str(Path(name_or_path).expanduser().resolve())


def find_base_model(cfg: ModelSection) -> BaseModel:
    """Resolve the base model like the app does (local folder -> caches -> hubs), building the tiny random model when
    ``model.build_tiny`` is set and it is missing, and convert a ChatGLM3 checkpoint to native GLM once."""
    from accelerate import PartialState

    from rag.llm.hf.load import native_folder

    def resolve() -> tuple[Path, str]:
        return hub.resolve_model(cfg.name_or_path, revision=cfg.revision, source=cfg.source,
                                 modelscope_id=cfg.modelscope_id, cache_dir=cfg.cache_dir,
                                 timeout_s=cfg.hub_timeout_s, kind="base model", section="model")

    with PartialState().main_process_first():  # one process downloads / converts / builds, the others then reuse it
        try:
            path, origin = resolve()
        except ModelUnavailableError:
            if not cfg.build_tiny:
                raise
            path, origin = build_tiny_base(cfg), f"tiny random {cfg.build_tiny} model built by the recipe"
        folder = native_folder(path, cfg.cache_dir)
    return BaseModel(recorded_model_id(cfg.name_or_path, path), cfg.revision, folder, origin)


def build_tiny_base(cfg: ModelSection) -> Path:
    """Build the tiny model where :func:`rag.models.hub.resolve_model` will find it next time: ``<cache>/<org>--<name>`` for
    a hub-style name (``kbqa/tiny-glm``), else the folder named."""
    from finetune.tiny import build_tiny_model

    name = cfg.name_or_path
    target = (cache_root(cfg.cache_dir) / cache_folder_name(name) if is_hub_id(name) and "/" in name
              else Path(name).expanduser())
    if target.exists():
        raise ConfigError(f"{target} exists but holds no model; remove it, or point model.name_or_path elsewhere")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    template = "" if cfg.template == "auto" else cfg.template
    build_tiny_model(partial, cfg.build_tiny, template)
    os.replace(partial, target)
    logger.info("built tiny %s model at %s", cfg.build_tiny, target)
    return target


def pick_template(setting: str, tokenizer: Any) -> ChatTemplate:
    """``auto``: the template the app will detect for this tokenizer; a name is checked against the tokenizer."""
    detected = detect_template(tokenizer)
    if setting == "auto":
        if detected is None:
            raise ConfigError("model.template=auto could not tell the chat template from the tokenizer; set "
                              "model.template to one of chatglm3, chatml, glm4, llama3")
        return get_template(detected)
    template = get_template(setting)
    template.check_tokenizer(tokenizer)
    if detected is not None and detected != setting:
        logger.warning("model.template=%s but the app will detect %s for this tokenizer and refuse the adapter",
                       setting, detected)
    return template


BITSANDBYTES_PIN = "bitsandbytes==0.50.2"


def quantization_settings(kind: str, precision: str, use_cpu: bool) -> Any:
    """``model.quantization`` -> a ``BitsAndBytesConfig`` (None when empty): 4bit = QLoRA's NF4 with double
    quantisation, computing in the training precision (bf16 on Ampere+); 8bit = LLM.int8.

    Raises:
        ConfigError: training on CPU (bitsandbytes' k-bit training kernels are CUDA ones), or bitsandbytes missing.
    """
    import importlib.util

    import torch

    if not kind:
        return None
    if use_cpu or not torch.cuda.is_available():
        raise ConfigError(f"model.quantization={kind} (QLoRA) needs a CUDA GPU: bitsandbytes' k-bit training "
                          "kernels do not run on CPU; set model.quantization= (empty) to train the unquantised base")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"model.quantization={kind} needs bitsandbytes: pip install {BITSANDBYTES_PIN} "
                          "(or set model.quantization= to train the unquantised base)")
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=torch.uint8)


def load_base_model(cfg: ModelSection, folder: Path, precision: str, use_cpu: bool,
                    gradient_checkpointing: bool) -> Any:
    """The base model for training in ``precision``; with ``model.quantization`` loaded k-bit on the GPU and
    prepared for k-bit training (peft: norms in float32, input gradients for checkpointing)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    quantization = quantization_settings(cfg.quantization, precision, use_cpu)
    extra: dict[str, Any] = {"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}
                             } if quantization is not None else {}
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                                 attn_implementation=cfg.attn_implementation, **extra)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model
