"""What the chat page does to a knowledge base, kept out of the UI: settings, uploads, deletes, re-index, feedback.

- **Settings** (:class:`AppSettings`) come from environment variables, then Streamlit secrets, then defaults; the
  RAG config comes from ``KBQA_CONFIG`` (a YAML path) plus ``KBQA_OVERRIDES`` (``key=value`` words).
- **Uploads** are saved only inside the knowledge folder, under a sanitised name (no path parts, no control or
  reserved characters, a supported suffix), within the size limit, written to a hidden temp file first and renamed,
  so a half-written upload is never indexed.
- **Deleting a document** deletes its file; the next sync (:func:`reindex`) takes its chunks out of the index.
- **Feedback** is appended to a JSONL file (one :class:`FeedbackRecord` a line, under a file lock) that
  ``finetune/`` turns into training data; a record re-sent for the same answer (a correction added later) has the
  same ``id``, and the last record of an id wins.

Uploads and deletes live in :mod:`rag.webui.uploads`, feedback in :mod:`rag.feedback`; both are re-exported here, so
the page and the tests keep one entry point (``rag.webui.kb``) for everything they do to a knowledge base.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.core.config import RagConfig, load_config
from rag.core.errors import ConfigError
from rag.embed.embedder import Embedder
from rag.index.docstore import DocStore, FileRecord
from rag.index.layout import DOCSTORE
from rag.index.report import IngestReport
from rag.index.sync import ProgressFn, sync_folder

ENV_CONFIG = "KBQA_CONFIG"  # path of the RAG config YAML (default configs/rag/default.yaml)
ENV_OVERRIDES = "KBQA_OVERRIDES"  # space-separated key=value overrides (shell quoting allowed)
ENV_PASSWORD = "KBQA_PASSWORD"
ENV_MAX_UPLOAD_MB = "KBQA_MAX_UPLOAD_MB"
ENV_FEEDBACK = "KBQA_FEEDBACK"
ENV_INDEXES = "KBQA_INDEXES"
ENV_CONVERSATIONS = "KBQA_CONVERSATIONS"
ENV_KNOWLEDGE_ROOT = "KBQA_KNOWLEDGE_ROOT"
ENV_USER_CONFIG = "KBQA_USER_CONFIG"


@dataclass(frozen=True)
class AppSettings:
    """Settings of the chat page that the RAG config does not hold.

    Attributes:
        max_upload_mb: largest file a user may upload (per file).
        password: when set, the page asks for it before showing anything.
        feedback_path: the JSONL file that thumbs up/down and corrections are appended to.
        indexes_root: the folder whose sub-folders holding a ``docstore.sqlite`` are offered as indexes;
            "" = the folder above ``index.dir``.
        generation_slots: answers generated at the same time (the rest queue).
        conversations_dir: the folder of ``conversations.sqlite``, where every user's chats are saved.
        knowledge_root: the folder that the documents folder of a knowledge base made from the page must be inside;
            "" = the folder above ``knowledge_dir``.
        user_config: the YAML file the model panel saves its choice to; "" = ``model.yaml`` in
            ``conversations_dir`` (:func:`rag.webui.model_choice.user_config_path`).
    """

    max_upload_mb: float = 50.0
    password: str = ""
    feedback_path: str = "feedback/feedback.jsonl"
    indexes_root: str = ""
    generation_slots: int = 1
    conversations_dir: str = "conversations"
    knowledge_root: str = ""
    user_config: str = ""


_SETTING_SOURCES = {  # field -> (environment variable, key in .streamlit/secrets.toml)
    "max_upload_mb": (ENV_MAX_UPLOAD_MB, "max_upload_mb"),
    "password": (ENV_PASSWORD, "password"),
    "feedback_path": (ENV_FEEDBACK, "feedback_path"),
    "indexes_root": (ENV_INDEXES, "indexes_root"),
    "generation_slots": ("KBQA_GENERATION_SLOTS", "generation_slots"),
    "conversations_dir": (ENV_CONVERSATIONS, "conversations_dir"),
    "knowledge_root": (ENV_KNOWLEDGE_ROOT, "knowledge_root"),
    "user_config": (ENV_USER_CONFIG, "user_config"),
}


def app_settings(environ: Mapping[str, str] | None = None, secrets: Mapping[str, Any] | None = None) -> AppSettings:
    """Settings from environment variables (first), then Streamlit secrets, then the defaults.

    Raises:
        ConfigError: a numeric setting that is not a positive number.
    """
    environ = os.environ if environ is None else environ
    secrets = secrets or {}
    values: dict[str, Any] = {}
    for name, (env_name, secret_name) in _SETTING_SOURCES.items():
        if environ.get(env_name, "") != "":
            values[name] = environ[env_name]
        elif secrets.get(secret_name) not in (None, ""):
            values[name] = secrets[secret_name]
    for name, kind in (("max_upload_mb", float), ("generation_slots", int)):
        if name in values:
            env_name, secret_name = _SETTING_SOURCES[name]
            raw = values[name]
            try:
                values[name] = kind(raw)
                if values[name] <= 0:
                    raise ValueError
            except (TypeError, ValueError):
                raise ConfigError(f"{env_name} / secrets {secret_name}={raw!r} must be a positive "
                                  f"{kind.__name__}, e.g. {env_name}=50") from None
    texts = {k: str(v) for k, v in values.items() if k not in ("max_upload_mb", "generation_slots")}
    defaults = AppSettings()
    return AppSettings(max_upload_mb=values.get("max_upload_mb", defaults.max_upload_mb),
                       generation_slots=values.get("generation_slots", defaults.generation_slots), **texts)


def config_source(environ: Mapping[str, str] | None = None) -> tuple[str, tuple[str, ...]]:
    """(config path or "", overrides) named by ``KBQA_CONFIG`` / ``KBQA_OVERRIDES``: a hashable cache key."""
    environ = os.environ if environ is None else environ
    try:
        overrides = tuple(shlex.split(environ.get(ENV_OVERRIDES, "")))
    except ValueError as exc:
        raise ConfigError(f"{ENV_OVERRIDES} is not valid shell quoting ({exc}); write key=value words") from None
    return environ.get(ENV_CONFIG, ""), overrides


def load_app_config(source: tuple[str, tuple[str, ...]]) -> RagConfig:
    """The RAG config for a :func:`config_source` key."""
    path, overrides = source
    return load_config(path or None, list(overrides))


# --- indexes and documents ------------------------------------------------------------------------------------------


def list_indexes(root: str | Path, always: str | Path | None = None) -> list[str]:
    """Sub-folders of ``root`` that hold an index (a ``docstore.sqlite``), sorted; ``always`` is included even when
    it holds none yet (the configured index, which the page can build)."""
    root = Path(root)
    inside = root.resolve()
    found = {p.resolve(): str(p) for p in root.iterdir()  # a link to a folder elsewhere is not offered
             if (p / DOCSTORE).is_file() and p.resolve().is_relative_to(inside)} if root.is_dir() else {}
    if always is not None:
        found[Path(always).resolve()] = str(Path(always))  # as configured, even when the scan spelt it otherwise
    return sorted(found.values())


def list_documents(index_dir: str | Path) -> list[FileRecord]:
    """The files an index knows (indexed and failed), by source path; empty when there is no index yet."""
    path = Path(index_dir) / DOCSTORE
    if not path.is_file():
        return []
    docstore = DocStore(path, readonly=True)
    try:
        return [docstore.files()[source] for source in sorted(docstore.files())]
    finally:
        docstore.close()


def reindex(folder: str | Path, cfg: RagConfig, index_dir: str | Path, embedder: Embedder | None,
            progress: ProgressFn | None = None) -> IngestReport:
    """Sync ``folder`` into ``index_dir`` (new, changed and deleted files); raises IndexStateError when another
    ingest is writing to the index or the embedder does not match it."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return sync_folder(folder, cfg, embedder, index_dir=index_dir, progress=progress)
