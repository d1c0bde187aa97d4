"""A model download started from the page: ``python -m rag.models download`` in a background process.

The download logic is :func:`rag.models.hub.download` (ModelScope when installed, then Hugging Face; into
``<cache>/<org>--<name>.partial``, renamed into place when complete). The page only starts that command, watches how
many bytes have landed in the ``.partial`` folder, and stops it:

- **background**: the child runs in its own process group and outlives the browser session that started it, so a
  reload or a second tab sees the same download (one at a time per page process);
- **cancellable**: SIGTERM to its group; the CLI passes the stop on to the hub client it runs (:mod:`rag.cli.models`);
- **resumable**: the ``.partial`` folder is kept when a download fails or is cancelled, and starting again continues
  from what is there. With huggingface_hub 2.4 that is per file: files that finished are kept and skipped, an
  unfinished one is fetched again from its start (the client writes each file to a temporary name unique to its
  process, so a later process cannot continue it); those orphaned ``*.incomplete`` files are removed before a restart
  (:func:`drop_orphans`), so they neither fill the disk nor count as progress. A model in shards (chatglm3-6b: 7)
  loses at most the shards that were in flight;
- **progress** is the bytes in the ``.partial`` folder against the file list's sizes (:func:`listed_size`);
- **disk space** is checked before starting: the model's size when it is known (:data:`KNOWN_SIZES`), else
  :data:`MIN_FREE_BYTES`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rag.core.config import REPO_ROOT
from rag.core.errors import ConfigError
from rag.core.paths import cache_root
from rag.models.ids import cache_folder_name, hub_ids, is_hub_id

GB = 1000**3
# what a download of the whole repository takes on disk (the hubs' file lists, rounded up): chatglm3-6b's repository
# holds its weights twice, as seven .bin and seven .safetensors shards of ~1.8 GB each
KNOWN_SIZES = {"chatglm3-6b": 25 * GB, "chatglm3-6b-32k": 25 * GB, "chatglm3-6b-base": 25 * GB,
               "text2vec-base-chinese": 1 * GB}
MIN_FREE_BYTES = 2 * GB  # an unknown model: at least this much must be free (a small model, or the start of one)
SOURCES = ("auto", "modelscope", "huggingface")
_RESULT = re.compile(r"^use it with: (llm|embed)\.model=(.+)$", re.MULTILINE)
_ERROR = re.compile(r"^error: (.+)$", re.MULTILINE)


def modelscope_installed() -> bool:
    return importlib.util.find_spec("modelscope") is not None


def download_command(model: str, source: str, cache_dir: str) -> list[str]:
    """The command the page runs: the project's own CLI, so the page and a terminal download the same way."""
    return [sys.executable, "-m", "rag.models", "download", model, "--source", source, "--cache-dir", cache_dir]


@dataclass(frozen=True)
class DownloadState:
    """Where the page's download stands.

    Attributes:
        status: idle | running | done | failed | cancelled.
        model: what is being (or was) downloaded.
        done_bytes: bytes in its ``.partial`` folder (or the finished folder).
        total_bytes: its size as the hub listed it (:func:`listed_size`), else as known (:data:`KNOWN_SIZES`); 0 when
            unknown.
        folder: the downloaded model's folder once done; the ``.partial`` folder otherwise.
        message: the CLI's error when failed; when done, the setting that uses the folder (``llm.model=...``, or
            ``embed.model=...`` for an embedding model, which cannot answer).
    """

    status: str = "idle"
    model: str = ""
    done_bytes: int = 0
    total_bytes: int = 0
    folder: str = ""
    message: str = ""

    @property
    def answers(self) -> bool:
        """A finished download of a language model (not an embedding model)."""
        return self.status == "done" and self.message.startswith("llm.model=")

    @property
    def fraction(self) -> float | None:
        return min(self.done_bytes / self.total_bytes, 1.0) if self.total_bytes else None


def folder_bytes(folder: Path) -> int:
    """Bytes under ``folder`` (the hub clients' unfinished ``*.incomplete`` files included)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def partial_folders(model: str, cache_dir: str) -> list[Path]:
    """The ``.partial`` folders a download of ``model`` writes into (one per hub id)."""
    root = cache_root(cache_dir)
    return [root / (cache_folder_name(repo) + ".partial") for repo in dict.fromkeys(hub_ids(model))
            if is_hub_id(repo)]


def drop_orphans(partial: Path) -> int:
    """Delete the unfinished ``*.incomplete`` files a stopped Hugging Face client left in ``partial`` (no later
    process can continue them); the bytes freed."""
    freed = 0
    for orphan in (partial / ".cache" / "huggingface" / "download").glob("**/*.incomplete"):
        with contextlib.suppress(OSError):
            size = orphan.stat().st_size
            orphan.unlink()
            freed += size
    return freed


def expected_size(model: str) -> int:
    return KNOWN_SIZES.get(model.lower().rsplit("/", 1)[-1], 0)


def listed_size(partial: Path) -> int:
    """The repository's size as the Hugging Face client listed it: once it has the file list, ``snapshot_download``
    keeps it in ``<local_dir>/.cache/huggingface/trees/<commit>.json`` (``{"files": {name: {"size": n}}}``). 0 when
    that is not there (yet), or another client or format wrote the folder: then :data:`KNOWN_SIZES` is used."""
    total = 0
    for listing in (partial / ".cache" / "huggingface" / "trees").glob("*.json"):
        try:
            files = json.loads(listing.read_text(encoding="utf-8")).get("files", {})
            total = max(total, sum(int(entry.get("size", 0)) for entry in files.values()))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return total


def human_bytes(count: int) -> str:
    for unit, size in (("GB", GB), ("MB", 1000**2), ("KB", 1000)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


class Downloader:
    """The page process's one background download.

    Args:
        cache_dir: the model cache (``llm.cache_dir``; ``$KBQA_CACHE`` wins) the CLI downloads into.
        log_dir: where the child's output is written (``download.log``).
        command: builds the child's command line from (model, source, cache_dir); tests pass a stand-in.
    """

    def __init__(self, cache_dir: str, log_dir: str | Path,
                 command: Callable[[str, str, str], list[str]] = download_command) -> None:
        self.cache_dir = cache_dir
        self.log_path = Path(log_dir) / "download.log"
        self.command = command
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._model = ""
        self._cancelled = False

    def start(self, model: str, source: str = "auto") -> None:
        """Start downloading ``model`` (a hub id or short name) unless a download is running.

        Raises:
            ConfigError: a download is already running, ``model`` is not a hub id, ``source`` is unknown, or the disk
                has too little free space (the message names the folder, what is free and what is needed).
        """
        model = model.strip()
        if source not in SOURCES:
            raise ConfigError(f"download source {source!r} is not one of {', '.join(SOURCES)}")
        if not is_hub_id(hub_ids(model)[0]):
            raise ConfigError(f"{model!r} is not a model id; write org/name (e.g. THUDM/chatglm3-6b) or chatglm3-6b")
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                raise ConfigError(f"{self._model} is still downloading; cancel it first")
            root = cache_root(self.cache_dir)
            root.mkdir(parents=True, exist_ok=True)
            partials = [p for p in partial_folders(model, self.cache_dir) if p.is_dir()]
            for partial in partials:  # nothing is downloading into it now (one download at a time)
                drop_orphans(partial)
            have = sum(folder_bytes(p) for p in partials)
            need = max(expected_size(model) - have, 0) or MIN_FREE_BYTES
            free = shutil.disk_usage(root).free
            if free < need:
                raise ConfigError(f"not enough disk space in {root}: {human_bytes(free)} free, {model} needs about "
                                  f"{human_bytes(need)} more; free some space or set llm.cache_dir to a larger disk")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "wb") as log:
                self._process = subprocess.Popen(self.command(model, source, self.cache_dir), stdout=log,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                                                 start_new_session=True)
            self._model, self._cancelled = model, False

    def cancel(self) -> None:
        """Stop the running download (its ``.partial`` folder stays, to resume from); nothing when none runs."""
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:
                return
            self._cancelled = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def state(self) -> DownloadState:
        with self._lock:
            process, model = self._process, self._model
            if process is None:
                return DownloadState()
            code = process.poll()
            partials = [p for p in partial_folders(model, self.cache_dir) if p.is_dir()]
            done = sum(folder_bytes(p) for p in partials)
            partial = str(partials[0]) if partials else ""
            total = max((listed_size(p) for p in partials), default=0) or expected_size(model)
            if code is None:
                return DownloadState("running", model, done, total, partial)
            output = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""
            if self._cancelled:
                return DownloadState("cancelled", model, done, total, partial)
            found = _RESULT.search(output)
            if code == 0 and found:
                folder = found.group(2).strip()
                setting = f"{found.group(1)}.model={folder}"
                return DownloadState("done", model, folder_bytes(Path(folder)), 0, folder, setting)
            error = _ERROR.findall(output)
            lines = [line for line in output.splitlines() if line.strip()]
            why = error[-1] if error else lines[-1] if lines else f"exit code {code}"
            return DownloadState("failed", model, done, total, partial, why)

    def wait(self, timeout_s: float) -> DownloadState:
        """The state once the download is no longer running, or after ``timeout_s`` (tests, scripts)."""
        deadline = time.monotonic() + timeout_s
        while (state := self.state()).status == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        return state
