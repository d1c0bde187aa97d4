"""Find a model as a local folder, or download it, without ever hanging.

:func:`resolve_model` tries, in order: a local folder -> our cache (``<cache_dir>/<org>--<name>``) -> the Hugging Face
cache (``local_files_only``) -> ModelScope's cache -> a ModelScope download (only when ``modelscope`` is installed) ->
a Hugging Face download. Every download runs in a child process group that is killed after ``timeout_s``, and is
skipped at once when ``HF_HUB_OFFLINE=1`` or ``KBQA_OFFLINE=1``. Downloads go to ``<id>.partial`` in our cache and
are renamed into place when complete, so a half-finished download is never mistaken for a model (and resumes).

:func:`download` is what ``python -m rag.models download`` calls. Importing this module loads no model library.
How models are *named* (hub ids, short names, cache folder names, download records) is :mod:`rag.models.ids`,
re-exported here; the download child-process scripts stay here, where tests replace them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rag.core.errors import ConfigError, ModelUnavailableError
from rag.core.paths import cache_root
from rag.models.ids import (
    DOWNLOAD_RECORD,
    cache_folder_name,
    hub_ids,
    is_hub_id,
    is_model_folder,
    read_download_record,
)

logger = logging.getLogger(__name__)

SOURCES = ("auto", "local", "modelscope", "huggingface")
HUB_LABELS = {"modelscope": "ModelScope", "huggingface": "Hugging Face"}


def offline_reason() -> str:
    """The environment variable that forbids network access (``HF_HUB_OFFLINE`` / ``KBQA_OFFLINE``), or ""."""
    for var in ("HF_HUB_OFFLINE", "KBQA_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return ""


def _modelscope_root() -> Path:
    return Path(os.environ.get("MODELSCOPE_CACHE", "~/.cache/modelscope/hub")).expanduser()


def _our_cache(ids: list[str], revision: str, root: Path) -> list[Path]:
    """Our cache: ``org--name[@rev]``, plus ModelScope's own layout (``org/name``, ``.`` written as ``___``)."""
    folders: list[Path] = []
    for repo in ids:
        if revision:
            folders.append(root / cache_folder_name(repo, revision))
        folders.append(root / cache_folder_name(repo))
        for name in dict.fromkeys((repo, repo.replace(".", "___"))):
            folders += [root / name, root / "models" / name]
    return folders


def _revision_ok(folder: Path, revision: str) -> bool:
    """A pinned revision only accepts a folder that we downloaded at that revision (or one that does not say)."""
    recorded = read_download_record(folder).get("revision", "")
    return not revision or not recorded or recorded == revision


def _hf_cached(repo: str, revision: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision or None, local_files_only=True))
    except Exception:  # not cached, bad id, huggingface_hub missing: all mean "not here"
        return None


_DOWNLOAD = """
import json, os, sys
hub, repo, revision, dest, patterns = sys.argv[1:6]
patterns = json.loads(patterns) or None
try:
    if hub == "modelscope":
        from modelscope import snapshot_download
        kwargs = {"revision": revision} if revision else {}
        if patterns:
            kwargs["allow_patterns"] = patterns
        path = snapshot_download(repo, local_dir=dest, **kwargs)
    else:
        from huggingface_hub import snapshot_download
        path = snapshot_download(repo, revision=revision or None, local_dir=dest, allow_patterns=patterns)
except BaseException as exc:
    print(json.dumps({"error": (type(exc).__name__ + ": " + str(exc)).splitlines()[0][:200]}))
    sys.exit(1)
print(json.dumps({"path": str(path)}))
"""


_PROBE = """
import json, sys
hub, repo, revision = sys.argv[1:4]
try:
    if hub == "modelscope":
        from modelscope.hub.api import HubApi
        HubApi().get_model(repo, **({"revision": revision} if revision else {}))
        found = "found"
    else:
        from huggingface_hub import HfApi
        found = "found at revision " + str(HfApi().model_info(repo, revision=revision or None).sha)
except BaseException as exc:
    print(json.dumps({"error": (type(exc).__name__ + ": " + str(exc)).splitlines()[0][:200]}))
    sys.exit(1)
print(json.dumps({"path": found}))
"""


def _run_child(script: str, args: list[str], timeout_s: float, show_progress: bool) -> tuple[str | None, str]:
    """Run a hub client in a child process group, killed after ``timeout_s``: (its result line, why not)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            stderr=None if show_progress else subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: hub clients start helper processes
        proc.communicate()
        return None, f"timed out after {timeout_s:g} s"
    except BaseException:  # Ctrl-C, or SIGTERM made SystemExit (the page's cancel): the hub client stops too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    try:
        result = json.loads(lines[-1]) if lines else {"error": f"exit code {proc.returncode}"}
    except ValueError:
        result = {"error": f"exit code {proc.returncode}"}
    if isinstance(result.get("path"), str):
        return result["path"], ""
    return None, f"failed ({result.get('error', 'no answer')})"


def _run_download(hub: str, repo: str, revision: str, dest: Path, timeout_s: float,
                  allow_patterns: list[str] | None, show_progress: bool) -> tuple[Path | None, str]:
    """One hub download into ``dest``: (folder, why not)."""
    args = [hub, repo, revision, str(dest), json.dumps(allow_patterns or [])]
    got, why = _run_child(_DOWNLOAD, args, timeout_s, show_progress)
    if got is None:
        return None, why
    if not is_model_folder(Path(got)):
        return None, "failed (no model folder in the download)"
    return Path(got), ""


def _download_into_cache(hub: str, repo: str, revision: str, root: Path, timeout_s: float,
                         allow_patterns: list[str] | None, show_progress: bool) -> tuple[Path | None, str]:
    final = root / cache_folder_name(repo, revision)
    partial = final.with_name(final.name + ".partial")  # kept on failure: the next attempt resumes it
    partial.mkdir(parents=True, exist_ok=True)
    got, why = _run_download(hub, repo, revision, partial, timeout_s, allow_patterns, show_progress)
    if got is None:
        return None, why
    if got.resolve() != partial.resolve():  # a client that ignored local_dir: use its folder as is
        return got, ""
    record = {"repo": repo, "source": hub, "revision": revision, "downloaded": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (partial / DOWNLOAD_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    if is_model_folder(final):  # someone else finished first
        return final, ""
    os.replace(partial, final)
    return final, ""


def _hub_plan(source: str, hf_id: str, ms_id: str) -> list[tuple[str, str]]:
    plan = [("modelscope", ms_id), ("huggingface", hf_id)]
    return [(hub, repo) for hub, repo in plan if source in ("auto", hub)]


def _check_source(source: str, section: str) -> None:
    if source not in SOURCES:
        key = f"{section}.source" if section else "source"
        raise ConfigError(f"{key}={source!r} is not one of {', '.join(SOURCES)}")


def resolve_model(
    model: str,
    *,
    revision: str = "",
    source: str = "auto",
    modelscope_id: str = "",
    cache_dir: str = "~/.cache/kbqa/models",
    timeout_s: float = 1800.0,
    kind: str = "model",
    allow_patterns: list[str] | None = None,
    section: str = "llm",
    network: bool = True,
) -> tuple[Path, str]:
    """Find ``model`` as a local folder, downloading it if allowed: (folder, one line on where it came from).

    Args:
        model: a local folder, a hub id (``THUDM/chatglm3-6b``) or a known short name (``chatglm3-6b``).
        revision: a hub commit / tag to pin; "" = the hub's default branch.
        source: auto (every step) | local (folder and caches only) | modelscope | huggingface.
        modelscope_id: the model's id on ModelScope when it differs from ``model``.
        cache_dir: our model cache (``$KBQA_CACHE`` overrides it); downloads land here.
        timeout_s: a download still running after this long is killed.
        kind: what the model is, for the error message ("language model", "embedding model").
        allow_patterns: only download files matching these globs (e.g. skip ``*.bin`` when safetensors exist).
        section: the config section the model comes from, for the fix in the error message (``llm`` / ``embed``).
        network: False = never download (``python -m rag.models check``).

    Raises:
        ModelUnavailableError: nothing worked; one line lists every attempt and the fix.
        ConfigError: ``source`` is not one of :data:`SOURCES`.
    """
    _check_source(source, section)
    local = Path(model).expanduser()
    if is_model_folder(local):
        return local.resolve(), f"local folder {local.resolve()}"
    hf_id, ms_id = hub_ids(model, modelscope_id)
    ids = [i for i in dict.fromkeys((hf_id, ms_id)) if is_hub_id(i)]
    root = cache_root(cache_dir)
    tried = ["no local folder"]
    caches = _our_cache(ids, revision, root) + (_our_cache(ids, "", _modelscope_root()) if source != "huggingface" else [])
    for folder in caches:
        if is_model_folder(folder) and _revision_ok(folder, revision):
            return folder, f"cache {folder}"
    if source != "modelscope" and is_hub_id(hf_id) and (cached := _hf_cached(hf_id, revision)) is not None:
        return cached, f"Hugging Face cache {cached}"
    tried.append("not in caches")
    for hub, repo in _hub_plan(source, hf_id, ms_id) if source != "local" else []:
        label = HUB_LABELS[hub]
        if not network:
            tried.append(f"{label}: not tried (no network in this mode)")
        elif offline := offline_reason():
            tried.append(f"{label}: offline ({offline}=1)")
        elif not is_hub_id(repo):
            tried.append(f"{label}: {repo!r} is not a hub id")
        elif hub == "modelscope" and importlib.util.find_spec("modelscope") is None:
            tried.append(f"{label}: not installed")
        else:
            logger.info("downloading %s from %s into %s", repo, label, root)
            got, why = _download_into_cache(hub, repo, revision, root, timeout_s, allow_patterns, False)
            if got is not None:
                return got, f"{label} download {repo}{'@' + revision if revision else ''}"
            tried.append(f"{label}: {why}")
    raise ModelUnavailableError(
        f"{kind} {model} not found: {', '.join(tried)}. Put the model in a folder and set {section}.model=/path, "
        f"or download it with `python -m rag.models download {model}`."
    )


def download(
    model: str,
    source: str = "auto",
    revision: str = "",
    cache_dir: str = "~/.cache/kbqa/models",
    timeout_s: float = 1800.0,
    *,
    modelscope_id: str = "",
    allow_patterns: list[str] | None = None,
    show_progress: bool = True,
) -> Path:
    """Download ``model`` (hub id or known short name) into our cache and return its folder.

    ``source=auto`` tries ModelScope first when it is installed, then Hugging Face. A folder already in our cache at
    this revision is returned without touching the network. The hub client's progress bars go to stderr.

    Raises:
        ModelUnavailableError: offline, not a hub id, or every hub failed / timed out.
    """
    _check_source(source, "")
    if source == "local":
        raise ConfigError("download needs --source modelscope, huggingface or auto, not local")
    hf_id, ms_id = hub_ids(model, modelscope_id)
    root = cache_root(cache_dir)
    plan = _hub_plan(source, hf_id, ms_id)
    for _, repo in plan:
        folder = root / cache_folder_name(repo, revision)
        if is_model_folder(folder):
            return folder
    if offline := offline_reason():
        raise ModelUnavailableError(f"cannot download {model}: offline ({offline}=1); unset {offline}, or copy the "
                                    "model folder to this machine and point the config at it")
    tried: list[str] = []
    for hub, repo in plan:
        label = HUB_LABELS[hub]
        if not is_hub_id(repo):
            tried.append(f"{label}: {repo!r} is not a hub id")
        elif hub == "modelscope" and importlib.util.find_spec("modelscope") is None:
            tried.append(f"{label}: not installed (pip install modelscope)")
        else:
            got, why = _download_into_cache(hub, repo, revision, root, timeout_s, allow_patterns, show_progress)
            if got is not None:
                return got
            tried.append(f"{label} {repo}: {why}")
    raise ModelUnavailableError(f"cannot download {model}: {', '.join(tried)}")


def probe(model: str, *, source: str = "auto", revision: str = "", modelscope_id: str = "",
          timeout_s: float = 20.0) -> list[str]:
    """Ask each hub whether ``model`` exists there, downloading nothing: one line per hub (for ``check --online``)."""
    _check_source(source, "")
    hf_id, ms_id = hub_ids(model, modelscope_id)
    lines = []
    for hub, repo in _hub_plan(source, hf_id, ms_id) if source != "local" else []:
        label = f"{HUB_LABELS[hub]} {repo}"
        if offline := offline_reason():
            lines.append(f"{label}: offline ({offline}=1)")
        elif not is_hub_id(repo):
            lines.append(f"{label}: not a hub id")
        elif hub == "modelscope" and importlib.util.find_spec("modelscope") is None:
            lines.append(f"{label}: modelscope not installed (pip install modelscope)")
        else:
            found, why = _run_child(_PROBE, [hub, repo, revision], timeout_s, False)
            lines.append(f"{label}: {found or why}")
    return lines
