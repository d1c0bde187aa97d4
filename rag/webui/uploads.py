"""Uploads and deletes in the knowledge folder: what a browser sends is saved only there, under a safe name.

An upload is saved only in the top level of the knowledge folder, under a sanitised name (no path parts, no control
or reserved characters, no Windows device names, a supported suffix), within the size limit, written to a hidden
temp file first and renamed, so a half-written upload is never indexed. Deleting a document deletes its file; the
next sync (:func:`rag.webui.kb.reindex`) takes its chunks out of the index. These are the file-system-facing, security
sensitive half of :mod:`rag.webui.kb`, kept apart so they can be read and tested as one unit; every name stays importable
from :mod:`rag.webui.kb`.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from rag.core.config import LoadConfig
from rag.core.errors import RagError

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 100  # of the stem; the suffix is kept whole
MAX_NAME_BYTES = 255  # of the whole name, UTF-8 encoded: what ext4, xfs, btrfs and tmpfs allow (a CJK char is 3)
_COPY_MARK_BYTES = len(" (9999)")  # room kept for the " (n)" that a second file of the same name gets
_RESERVED = re.compile(r'[<>:"/\\|?*]')  # not allowed in file names on at least one common system
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                              *(f"lpt{i}" for i in range(1, 10))})


class UploadError(RagError):
    """An upload was refused. ``kind``: too_large | unsupported | empty | bad_name | outside | not_saved (for UI
    messages)."""

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
    from rag.ingest.load import SUPPORTED_SUFFIXES, UNSTRUCTURED_SUFFIXES

    suffixes = set(SUPPORTED_SUFFIXES)
    if cfg.use_unstructured and importlib.util.find_spec("unstructured") is not None:
        suffixes |= UNSTRUCTURED_SUFFIXES
    return sorted(suffixes)


def safe_filename(name: str, suffixes: list[str]) -> str:
    """A file name safe to create in the knowledge folder, from a name a browser sent.

    Keeps only the last path component (``/`` or ``\\``), removes control and reserved characters, leading dots and
    surrounding blanks, cuts the stem to ``MAX_NAME_CHARS`` characters and the whole name (with room for a
    `` (n)`` copy number) to ``MAX_NAME_BYTES`` UTF-8 bytes, never inside a character, keeping the suffix whole;
    lower-cases the suffix and keeps CJK as it is.

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
    stem = stem.strip(" .")[:MAX_NAME_CHARS]
    room = MAX_NAME_BYTES - _COPY_MARK_BYTES - len(suffix.encode("utf-8"))
    stem = stem.encode("utf-8")[:max(room, 0)].decode("utf-8", "ignore").rstrip(" .")  # "ignore": a cut character
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


def _next_name(folder: Path, name: str, number: int) -> Path:
    stem, suffix = os.path.splitext(name)
    return folder / (name if number == 1 else f"{stem} ({number}){suffix}")


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def _claim(tmp: Path, target: Path) -> bool:
    """Give the finished temp file the name ``target`` only if no file has it: True when claimed.

    ``link()`` fails when the name exists, so of many uploads racing for one name exactly one wins, and the file
    appears whole (a file system without hard links gets an ``O_EXCL`` create and a copy instead).
    """
    try:
        os.link(tmp, target, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
    try:
        with open(target, "xb") as handle:
            handle.write(tmp.read_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        return True
    except FileExistsError:
        return False


def save_upload(folder: str | Path, name: str, data: bytes, max_bytes: int, suffixes: list[str],
                replace: bool = False) -> SavedUpload:
    """Save an uploaded file in the top level of the knowledge ``folder`` (never anywhere else).

    The bytes go to a hidden temp file first; the final name is then claimed atomically, so concurrent uploads of
    one name each get their own file (``name (2).ext``, ...) and none is lost.

    Args:
        folder: the knowledge folder.
        name: the file name as the browser sent it (sanitised here).
        data: the file's bytes.
        max_bytes: the size limit.
        suffixes: allowed suffixes (:func:`upload_suffixes`).
        replace: overwrite a different file of the same name; else save as ``name (2).ext``.

    Raises:
        UploadError: too large, empty, unsupported type, an unusable name, or the file system refused the write
            (kind ``not_saved``, with its reason).
    """
    folder = Path(folder)
    if len(data) > max_bytes:
        raise UploadError("too_large", name, f"{name} is {len(data) / 2**20:.1f} MB, over the upload limit of "
                                             f"{max_bytes / 2**20:.0f} MB")
    if not data:
        raise UploadError("empty", name, f"{name} is empty")
    safe = safe_filename(name, suffixes)
    try:
        return _save(folder, name, safe, data, replace)
    except OSError as exc:  # a full disk, a read-only folder...: one line for the page, never a traceback
        reason = exc.strerror or type(exc).__name__
        raise UploadError("not_saved", name, f"{name} was not saved: {reason}") from None


def _save(folder: Path, name: str, safe: str, data: bytes, replace: bool) -> SavedUpload:
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / safe).parent.resolve() != folder.resolve():  # safe_filename leaves no path part; kept as a guard
        raise UploadError("outside", name, f"{name} would be saved outside {folder}")
    tmp = folder / f".upload-{os.getpid()}-{time.monotonic_ns()}.part"  # hidden: never picked up by an ingest
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        for number in range(1, 10_000):
            target = _next_name(folder, safe, number)
            if number == 1 and replace and target.is_file() and not target.is_symlink():
                if _same_bytes(target, data):
                    return SavedUpload(target.name, target, "unchanged", len(data))
                os.replace(tmp, target)
                status = "replaced"
                break
            if _claim(tmp, target):
                status = "new" if number == 1 else "renamed"
                break
            if _same_bytes(target, data):  # this very file is already there (under its name or a copy's)
                return SavedUpload(target.name, target, "unchanged", len(data))
        else:
            raise UploadError("bad_name", name, f"too many files called {safe} in {folder}")
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
