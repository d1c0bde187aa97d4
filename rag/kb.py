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
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
import shlex
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from rag.config import LoadConfig, RagConfig, load_config
from rag.docstore import DocStore, FileRecord
from rag.embed import Embedder
from rag.errors import ConfigError, RagError
from rag.index import DOCSTORE
from rag.sync import IngestReport, ProgressFn, sync_folder

log = logging.getLogger(__name__)

ENV_CONFIG = "KBQA_CONFIG"  # path of the RAG config YAML (default configs/rag/default.yaml)
ENV_OVERRIDES = "KBQA_OVERRIDES"  # space-separated key=value overrides (shell quoting allowed)
ENV_PASSWORD = "KBQA_PASSWORD"
ENV_MAX_UPLOAD_MB = "KBQA_MAX_UPLOAD_MB"
ENV_FEEDBACK = "KBQA_FEEDBACK"
ENV_INDEXES = "KBQA_INDEXES"
MAX_NAME_CHARS = 100  # of the stem; the suffix is kept whole
_RESERVED = re.compile(r'[<>:"/\\|?*]')  # not allowed in file names on at least one common system
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                              *(f"lpt{i}" for i in range(1, 10))})


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
    """

    max_upload_mb: float = 50.0
    password: str = ""
    feedback_path: str = "feedback/feedback.jsonl"
    indexes_root: str = ""
    generation_slots: int = 1


_SETTING_SOURCES = {  # field -> (environment variable, key in .streamlit/secrets.toml)
    "max_upload_mb": (ENV_MAX_UPLOAD_MB, "max_upload_mb"),
    "password": (ENV_PASSWORD, "password"),
    "feedback_path": (ENV_FEEDBACK, "feedback_path"),
    "indexes_root": (ENV_INDEXES, "indexes_root"),
    "generation_slots": ("KBQA_GENERATION_SLOTS", "generation_slots"),
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


# --- uploads and deletes --------------------------------------------------------------------------------------------


class UploadError(RagError):
    """An upload was refused. ``kind``: too_large | unsupported | empty | bad_name | outside (for UI messages)."""

    def __init__(self, kind: str, name: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.name = kind, name


@dataclass(frozen=True)
class SavedUpload:
    """Where an upload went. status: new | replaced | renamed (a different file had the name) | unchanged."""

    source: str  # path relative to the knowledge folder, "/" separated
    path: Path
    status: str
    size: int


def upload_suffixes(cfg: LoadConfig) -> list[str]:
    """File suffixes (with the dot) that an ingest can parse here, so the only ones worth uploading."""
    from rag.load import SUPPORTED_SUFFIXES, UNSTRUCTURED_SUFFIXES

    suffixes = set(SUPPORTED_SUFFIXES)
    if cfg.use_unstructured and importlib.util.find_spec("unstructured") is not None:
        suffixes |= UNSTRUCTURED_SUFFIXES
    return sorted(suffixes)


def safe_filename(name: str, suffixes: list[str]) -> str:
    """A file name safe to create in the knowledge folder, from a name a browser sent.

    Keeps only the last path component (``/`` or ``\\``), removes control and reserved characters, leading dots and
    surrounding blanks, cuts the stem to ``MAX_NAME_CHARS``, lower-cases the suffix, and keeps CJK as it is.

    Raises:
        UploadError: ``bad_name`` when nothing usable is left, ``unsupported`` for a suffix not in ``suffixes``.
    """
    base = unicodedata.normalize("NFC", re.split(r"[\\/]", name)[-1])
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")  # control, format, unassigned
    base = " ".join(_RESERVED.sub("_", base).split()).rstrip(" .")
    stem, dot, suffix = base.rpartition(".")  # before the leading dots go: ".md" is a name without a stem
    if not dot:
        stem, suffix = base, ""
    suffix = "." + suffix.lower() if suffix else ""
    stem = stem.strip(" .")[:MAX_NAME_CHARS].rstrip(" .")
    if suffix not in suffixes:
        shown = suffix or "(none)"
        raise UploadError("unsupported", name, f"{name}: file type {shown} cannot be indexed; "
                                               f"supported: {' '.join(suffixes)}")
    if not stem:
        raise UploadError("bad_name", name, f"{name!r} has no usable file name; rename it and upload again")
    if stem.split(".")[0].lower() in _WINDOWS_DEVICES:
        stem = "_" + stem
    return stem + suffix


def _inside(folder: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _free_name(folder: Path, name: str) -> Path:
    stem, suffix = os.path.splitext(name)
    for number in range(2, 10_000):
        candidate = folder / f"{stem} ({number}){suffix}"
        if not candidate.exists():
            return candidate
    raise UploadError("bad_name", name, f"too many files called {name} in {folder}")


def save_upload(folder: str | Path, name: str, data: bytes, max_bytes: int, suffixes: list[str],
                replace: bool = False) -> SavedUpload:
    """Save an uploaded file in the top level of the knowledge ``folder`` (never anywhere else).

    Args:
        folder: the knowledge folder.
        name: the file name as the browser sent it (sanitised here).
        data: the file's bytes.
        max_bytes: the size limit.
        suffixes: allowed suffixes (:func:`upload_suffixes`).
        replace: overwrite a different file of the same name; else save as ``name (2).ext``.

    Raises:
        UploadError: too large, empty, unsupported type, or an unusable name.
    """
    folder = Path(folder)
    if len(data) > max_bytes:
        raise UploadError("too_large", name, f"{name} is {len(data) / 2**20:.1f} MB, over the upload limit of "
                                             f"{max_bytes / 2**20:.0f} MB")
    if not data:
        raise UploadError("empty", name, f"{name} is empty")
    safe = safe_filename(name, suffixes)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / safe
    status = "new"
    if target.is_symlink() or (target.exists() and not target.is_file()):
        target, status = _free_name(folder, safe), "renamed"
    elif target.exists():
        if target.read_bytes() == data:
            return SavedUpload(target.name, target, "unchanged", len(data))
        if replace:
            status = "replaced"
        else:
            target, status = _free_name(folder, safe), "renamed"
    if not _inside(folder, target.parent) or target.parent.resolve() != folder.resolve():
        raise UploadError("outside", name, f"{name} would be saved outside {folder}")
    tmp = folder / f".upload-{os.getpid()}-{time.monotonic_ns()}.part"  # hidden: never picked up by an ingest
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("saved upload %s (%d bytes, %s)", target, len(data), status)
    return SavedUpload(target.name, target, status, len(data))


def delete_document(folder: str | Path, source: str) -> bool:
    """Delete the file ``source`` (relative to the knowledge ``folder``); False when it was already gone.

    The index keeps its chunks until the next :func:`reindex`, which removes them.

    Raises:
        RagError: ``source`` points outside the folder, or is not a file.
    """
    folder = Path(folder)
    path = folder / source
    try:  # a NUL byte or an over-long name: the OS refuses it, and so do we, with our own error
        if Path(source).is_absolute() or ".." in Path(source).parts or not _inside(folder, path.parent):
            raise RagError(f"{source!r} is not a document inside {folder}")
        if not path.exists() and not path.is_symlink():
            return False
        if not path.is_file() and not path.is_symlink():
            raise RagError(f"{source!r} is not a file")
        path.unlink()
    except (OSError, ValueError) as exc:
        raise RagError(f"{source!r} cannot be deleted: {exc}") from None
    log.info("deleted document %s", path)
    return True


# --- feedback -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackCitation:
    number: int
    source: str
    page: int | None
    quote: str


@dataclass(frozen=True)
class FeedbackRecord:
    """One line of ``feedback.jsonl``: a rated answer, with the user's correction if they wrote one.

    Attributes:
        time: ISO 8601 local time with offset.
        question: what the user asked.
        answer: the answer shown (citations as ``[n]``).
        rating: ``up`` or ``down``.
        correction: what the answer should have said ("" if none).
        citations: the answer's citations with the supporting sentence.
        model: the model that answered (``model_id + adapter``).
        adapter: the LoRA adapter ("" = the base model).
        id: the answer's id; a later record with the same id replaces the earlier.
        index: the index folder the answer came from.
    """

    time: str
    question: str
    answer: str
    rating: str
    correction: str = ""
    citations: list[FeedbackCitation] = field(default_factory=list)
    model: str = ""
    adapter: str = ""
    id: str = ""
    index: str = ""


RATINGS = ("up", "down")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def append_feedback(path: str | Path, record: FeedbackRecord) -> None:
    """Append ``record`` as one JSON line (UTF-8, not ASCII-escaped), safely across threads and processes."""
    if record.rating not in RATINGS:
        raise ValueError(f"rating={record.rating!r} must be one of {', '.join(RATINGS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n"
    with FileLock(str(path) + ".lock"), open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_feedback(path: str | Path) -> list[dict[str, Any]]:
    """The feedback records in ``path``, the last one per id (records without an id all kept), oldest first."""
    path = Path(path)
    if not path.is_file():
        return []
    latest: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            record = json.loads(line)
            latest.pop(record.get("id") or f"#{number}", None)  # re-insert: the order is the last write's
            latest[record.get("id") or f"#{number}"] = record
    return list(latest.values())
