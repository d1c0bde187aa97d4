"""What a model is called and where a local copy came from: hub ids, short names, cache folder names, records.

:mod:`rag.models.hub` finds and downloads models; this module only *names* them, with no network and no child processes:
``org/name`` checks, the known short names (``chatglm3-6b``) and their id on each hub, our cache's folder names, the
download record we write beside a model, and :func:`canonical_model_id`, which the adapter base check and the model
CLI compare. It is separate so that the naming rules read in one place and can be used without the download code;
every name stays importable from :mod:`rag.models.hub`.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

DOWNLOAD_RECORD = "kbqa_download.json"  # written next to a model we downloaded: repo, source, revision, time
CONVERSION_RECORD = "kbqa_conversion.json"  # written by rag.llm.glm.convert into a native copy: its "source" folder
# short names -> the same model's id on each hub (the CLI's aliases, and what adapter base checks compare)
KNOWN_MODELS: dict[str, dict[str, str]] = {
    "chatglm3-6b": {"huggingface": "THUDM/chatglm3-6b", "modelscope": "ZhipuAI/chatglm3-6b"},
    "chatglm3-6b-32k": {"huggingface": "THUDM/chatglm3-6b-32k", "modelscope": "ZhipuAI/chatglm3-6b-32k"},
    "chatglm3-6b-base": {"huggingface": "THUDM/chatglm3-6b-base", "modelscope": "ZhipuAI/chatglm3-6b-base"},
    "text2vec-base-chinese": {"huggingface": "shibing624/text2vec-base-chinese",
                              "modelscope": "Jerry0/text2vec-base-chinese"},
}
_UNSAFE = re.compile(r"[^\w.-]")  # characters a revision may not bring into a folder name
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")  # org/name (or a legacy bare name)


def is_hub_id(text: str) -> bool:
    """``org/name`` as the hubs spell it; never a path (no ``..``, no leading ``/`` or ``~``)."""
    return bool(_HUB_ID.match(text)) and ".." not in text


def is_model_folder(path: Path) -> bool:
    """A transformers (``config.json``) or sentence-transformers (``modules.json``) folder."""
    return path.is_dir() and ((path / "config.json").is_file() or (path / "modules.json").is_file())


def hub_ids(model: str, modelscope_id: str = "") -> tuple[str, str]:
    """(Hugging Face id, ModelScope id) of ``model``: a known short name expands to both; else ``model`` on both."""
    known = KNOWN_MODELS.get(model.lower())
    if known is not None:
        return known["huggingface"], modelscope_id or known["modelscope"]
    return model, modelscope_id or model


def cache_folder_name(repo: str, revision: str = "") -> str:
    """``THUDM/chatglm3-6b`` -> ``THUDM--chatglm3-6b``; a pinned revision adds ``@<revision>``."""
    name = repo.replace("/", "--")
    return f"{name}@{_UNSAFE.sub('_', revision)}" if revision else name


def read_download_record(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / DOWNLOAD_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_model_id(folder: Path) -> str:
    """The hub id a local model folder came from, when it says so; "" when it does not.

    Looks at our download record, a native ChatGLM3 copy's source folder, a Hugging Face cache path
    (``models--org--name/snapshots/<sha>``), our cache's ``org--name`` folder names, and ``config.json``'s
    ``_name_or_path``.
    """
    record = read_download_record(folder).get("repo")
    if isinstance(record, str) and record:
        return record
    with contextlib.suppress(OSError, ValueError, AttributeError):
        source = json.loads((folder / CONVERSION_RECORD).read_text(encoding="utf-8")).get("source")
        if isinstance(source, str) and source and Path(source).resolve() != folder.resolve():
            return folder_model_id(Path(source))
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name[len("models--"):].replace("--", "/", 1)
    name = folder.name.split("@", 1)[0]
    if "--" in name and is_hub_id(name.replace("--", "/", 1)):
        return name.replace("--", "/", 1)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    name_or_path = config.get("_name_or_path", "") if isinstance(config, dict) else ""
    return name_or_path if isinstance(name_or_path, str) and is_hub_id(name_or_path) else ""


def canonical_model_id(model: str) -> str:
    """A comparable identity of a model: the known short name (``chatglm3-6b`` for ``THUDM/chatglm3-6b``,
    ``ZhipuAI/chatglm3-6b`` or a local folder whose config names either), else the lower-cased hub id or path."""
    path = Path(model).expanduser()
    if not is_hub_id(model) and is_model_folder(path):
        model = folder_model_id(path) or str(path.resolve())
    lowered = model.lower()
    for short, ids in KNOWN_MODELS.items():
        if lowered == short or lowered in (i.lower() for i in ids.values()):
            return short
    return lowered
