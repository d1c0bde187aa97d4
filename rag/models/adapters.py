"""The LoRA adapter registry: ``<adapters_dir>/<name>/`` folders written by ``finetune``, checked before loading.

An adapter folder holds peft's files (``adapter_config.json`` + ``adapter_model.safetensors``) and ``rag_adapter.json``:

    {"name": "law-qa", "base_model": "THUDM/chatglm3-6b", "base_revision": "", "template": "chatglm3",
     "dataset": "data/law.jsonl", "metrics": {"rouge-l": 0.41}, "created": "2026-11-24T10:00:00Z",
     "lora": {"r": 8, "alpha": 32, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}, "format_version": 1,
     "stage": "dpo", "reference_adapter": "adapters/law-sft", "base_quantization": "4bit"}

``stage`` (sft | dpo | kto), ``reference_adapter`` (what a preference stage was held to; "" = the base) and
``base_quantization`` ("" | 4bit | 8bit: the base it was trained on; :func:`quantization_note` warns when it is served
on another) default to an SFT adapter on the unquantised base for older files.

:func:`list_adapters` says for each folder whether it can be used and, if not, why (one line for the UI):
a different base model (ids compared through :func:`rag.models.hub.canonical_model_id`, so ``THUDM/chatglm3-6b`` equals
``ZhipuAI/chatglm3-6b``), another chat template, missing files, pickled ``.bin`` weights (never unpickled), or a name
that is not a safe folder name. An adapter from ChatGLM3's own ``finetune_demo`` (LoRA on the fused
``query_key_value``) is converted once into a cached native copy (:mod:`rag.llm.glm.convert`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.core.errors import ConfigError
from rag.models.ids import canonical_model_id

logger = logging.getLogger(__name__)

METADATA_FILE = "rag_adapter.json"
PEFT_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"
FORMAT_VERSION = 1
FUSED_CHATGLM3 = "query_key_value"  # finetune_demo's LoRA target: converted to native q/k/v before loading
_SAFE_NAME = re.compile(r"^[^\W_][\w.-]{0,63}$")  # \w includes CJK; a letter or digit first, so never "." or ".."


@dataclass(frozen=True)
class LoraSettings:
    r: int = 0
    alpha: float = 0.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdapterMetadata:
    """``rag_adapter.json``; ``inferred`` marks metadata guessed for a ChatGLM3 finetune_demo adapter without one."""

    name: str
    base_model: str
    template: str
    base_revision: str = ""
    dataset: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    created: str = ""
    lora: LoraSettings = field(default_factory=LoraSettings)
    format_version: int = FORMAT_VERSION
    inferred: bool = False
    stage: str = "sft"  # how it was trained: sft | dpo | kto
    reference_adapter: str = ""  # dpo/kto: the adapter it started from and was held to ("" = the base model)
    base_quantization: str = ""  # the base it was trained on: "" (unquantised) | 4bit | 8bit (QLoRA)


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter folder and whether it can be loaded (``reason`` says why not, in one line)."""

    name: str
    path: Path
    metadata: AdapterMetadata | None
    usable: bool
    reason: str = ""
    fused_qkv: bool = False  # ChatGLM3 finetune_demo format: needs conversion (prepare_adapter)




def is_safe_name(name: str) -> bool:
    return bool(_SAFE_NAME.match(name))


def _unsafe(name: str) -> str:
    return f"adapter name {name!r} is not a safe folder name (letters, digits, CJK, '-', '_' and '.' only)"


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _lora_from_peft(peft: dict[str, Any]) -> LoraSettings:
    targets = peft.get("target_modules") or ()
    return LoraSettings(r=int(peft.get("r", 0) or 0), alpha=float(peft.get("lora_alpha", 0) or 0),
                        dropout=float(peft.get("lora_dropout", 0) or 0),
                        target_modules=(targets,) if isinstance(targets, str) else tuple(sorted(targets)))


def _metadata_from(data: dict[str, Any], folder: Path) -> AdapterMetadata:
    lora = data.get("lora") or {}
    targets = lora.get("target_modules") or ()
    return AdapterMetadata(
        name=str(data.get("name") or folder.name), base_model=str(data["base_model"]), template=str(data["template"]),
        base_revision=str(data.get("base_revision", "")), dataset=str(data.get("dataset", "")),
        metrics={str(k): float(v) for k, v in (data.get("metrics") or {}).items()}, created=str(data.get("created", "")),
        lora=LoraSettings(r=int(lora.get("r", 0)), alpha=float(lora.get("alpha", 0)),
                          dropout=float(lora.get("dropout", 0)),
                          target_modules=(targets,) if isinstance(targets, str) else tuple(targets)),
        format_version=int(data.get("format_version", 0)), stage=str(data.get("stage") or "sft"),
        reference_adapter=str(data.get("reference_adapter") or ""),
        base_quantization=str(data.get("base_quantization") or ""),
    )


def _inspect(folder: Path, adapters_dir: Path, name: str) -> AdapterInfo:
    """The structural checks: name, location, files, metadata (not the base model)."""

    def refuse(reason: str, metadata: AdapterMetadata | None = None, fused: bool = False) -> AdapterInfo:
        return AdapterInfo(name, folder, metadata, False, reason, fused)

    if not is_safe_name(name):
        return refuse(_unsafe(name))
    if not folder.resolve().is_relative_to(adapters_dir.resolve()):
        return refuse(f"adapter folder {name} resolves outside {adapters_dir}")
    if not folder.is_dir():
        return refuse(f"no adapter folder {name!r} in {adapters_dir}")
    if not (folder / PEFT_CONFIG).is_file():
        return refuse(f"{PEFT_CONFIG} is missing")
    real_folder = folder.resolve()
    for file_name in (PEFT_CONFIG, WEIGHTS, METADATA_FILE, PICKLED_WEIGHTS):  # a link out would read a file elsewhere
        if (folder / file_name).is_symlink() and not (folder / file_name).resolve().is_relative_to(real_folder):
            return refuse(f"{file_name} links outside the adapter folder {name}")
    try:
        peft = _read_json(folder / PEFT_CONFIG)
    except (OSError, ValueError) as exc:
        return refuse(f"{PEFT_CONFIG} is not valid JSON ({exc})")
    lora = _lora_from_peft(peft)
    fused = FUSED_CHATGLM3 in lora.target_modules
    if not (folder / WEIGHTS).is_file():
        if (folder / PICKLED_WEIGHTS).is_file():
            return refuse(f"only {PICKLED_WEIGHTS} (a pickle) is present; adapters are loaded from {WEIGHTS} only: "
                          "re-save it with safe_serialization=True")
        return refuse(f"{WEIGHTS} is missing")
    if not (folder / METADATA_FILE).is_file():
        base = str(peft.get("base_model_name_or_path") or "")
        if fused and canonical_model_id(base).startswith("chatglm3"):  # finetune_demo output: trained on ChatGLM3
            meta = AdapterMetadata(name=name, base_model=base, template="chatglm3", lora=lora, format_version=0,
                                   inferred=True)
            return AdapterInfo(name, folder, meta, True, "", fused)
        return refuse(f"{METADATA_FILE} is missing (finetune writes it; rag.models.adapters.write_metadata adds one)")
    try:
        meta = _metadata_from(_read_json(folder / METADATA_FILE), folder)
    except KeyError as exc:
        return refuse(f"{METADATA_FILE} lacks {exc.args[0]}")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return refuse(f"{METADATA_FILE} is not valid ({exc})")
    if meta.format_version > FORMAT_VERSION:
        return refuse(f"{METADATA_FILE} format_version {meta.format_version} is newer than this app reads "
                      f"({FORMAT_VERSION}); update the app", meta, fused)
    if not is_safe_name(meta.name):
        return refuse(_unsafe(meta.name), meta, fused)
    return AdapterInfo(name, folder, meta, True, "", fused)


def find_adapter(adapters_dir: str | Path, name: str) -> AdapterInfo:
    """The adapter called ``name`` (a folder under ``adapters_dir``); unusable with a reason if the name is unsafe,
    resolves outside ``adapters_dir`` (a symlink), or the folder is missing or incomplete."""
    root = Path(adapters_dir).expanduser()
    return _inspect(root / name if is_safe_name(name) else root, root, name)


def check_adapter(info: AdapterInfo, base_model_id: str, template: str, base_revision: str = "") -> tuple[bool, str]:
    """Whether ``info`` can be loaded onto the base model ``base_model_id`` that uses chat template ``template``.

    Returns:
        (usable, reason): reason is "" when usable, else one line for the UI.
    """
    if not info.usable or info.metadata is None:
        return False, info.reason or "no metadata"
    meta = info.metadata
    if canonical_model_id(meta.base_model) != canonical_model_id(base_model_id):
        return False, f"trained on base model {meta.base_model}, but the loaded model is {base_model_id}"
    if meta.base_revision and base_revision and meta.base_revision != base_revision:
        return False, (f"trained on {meta.base_model} revision {meta.base_revision}, but the loaded model is "
                       f"revision {base_revision}")
    if meta.template.lower() != template.lower():
        return False, f"trained with chat template {meta.template}, but the loaded model uses {template}"
    return True, ""


def quantization_note(info: AdapterInfo, serving_quantization: str) -> str:
    """One line when the adapter was trained on a differently quantised base than the one serving it ("" if the
    same). Not a refusal: a QLoRA adapter works on the unquantised base and vice versa, answers differ slightly."""
    trained = info.metadata.base_quantization if info.metadata is not None else ""
    if trained == serving_quantization or {trained, serving_quantization} == {"4bit", "nf4"}:  # nf4 is 4bit's name
        return ""
    trained_on, served_on = (f"{kind} quantised" if kind else "unquantised" for kind in (trained, serving_quantization))
    return (f"adapter {info.name} was trained on the {trained_on} base but is served on the {served_on} one; "
            f"answers may differ slightly from its evaluation (set llm.quantization={trained} to match)")


def list_adapters(adapters_dir: str | Path, base_model_id: str | None = None, template: str | None = None,
                  base_revision: str = "") -> list[AdapterInfo]:
    """Every folder under ``adapters_dir`` (sorted by name), checked; with ``base_model_id`` also checked against
    that base model, and with ``template`` against its chat template. A missing ``adapters_dir`` has no adapters."""
    root = Path(adapters_dir).expanduser()
    if not root.is_dir():
        return []
    infos = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        info = _inspect(folder, root, folder.name)
        if info.usable and info.metadata is not None and base_model_id is not None:
            wanted = template if template is not None else info.metadata.template  # None: not checked
            usable, reason = check_adapter(info, base_model_id, wanted, base_revision)
            info = dataclasses.replace(info, usable=usable, reason=reason)
        infos.append(info)
    return infos












_WRITABLE = [f.name for f in dataclasses.fields(AdapterMetadata) if f.name != "inferred"]


def write_metadata(folder: str | Path, **fields: Any) -> Path:
    """Write (or update) ``<folder>/rag_adapter.json``; returns its path.

    Fields not given keep their value in an existing file, else default: ``name`` = the folder name, ``created`` =
    now (UTC), ``lora`` = read from ``adapter_config.json``, ``format_version`` = the current one. ``base_model`` and
    ``template`` are required.

    Raises:
        ConfigError: an unknown field, a missing required one, or an unsafe name.
    """
    folder = Path(folder)
    unknown = sorted(set(fields) - set(_WRITABLE))
    if unknown:
        raise ConfigError(f"unknown rag_adapter.json field(s) {', '.join(unknown)}; valid: {', '.join(_WRITABLE)}")
    path = folder / METADATA_FILE
    data: dict[str, Any] = _read_json(path) if path.is_file() else {}
    data.update(fields)
    data.setdefault("name", folder.name)
    data.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    data.setdefault("format_version", FORMAT_VERSION)
    data.setdefault("base_revision", "")
    data.setdefault("dataset", "")
    data.setdefault("metrics", {})
    if "lora" not in data and (folder / PEFT_CONFIG).is_file():
        data["lora"] = dataclasses.asdict(_lora_from_peft(_read_json(folder / PEFT_CONFIG)))
    elif isinstance(data.get("lora"), LoraSettings):
        data["lora"] = dataclasses.asdict(data["lora"])
    for required in ("base_model", "template"):
        if not data.get(required):
            raise ConfigError(f"rag_adapter.json needs {required}, e.g. write_metadata(folder, {required}=...)")
    if not is_safe_name(str(data["name"])):
        raise ConfigError(_unsafe(str(data["name"])))
    data["metrics"] = {str(k): float(v) for k, v in dict(data["metrics"]).items()}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({k: data[k] for k in sorted(data)}, ensure_ascii=False, indent=2) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)
    return path
