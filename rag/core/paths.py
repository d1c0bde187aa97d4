"""Where the project keeps files, and how it writes them so that a crash never leaves half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


DEFAULT_CACHE_DIR = "~/.cache/kbqa/models"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The model cache folder: ``$KBQA_CACHE`` if set, else ``cache_dir``, else ``~/.cache/kbqa/models``."""
    env = os.environ.get("KBQA_CACHE", "").strip()
    return Path(env or cache_dir or DEFAULT_CACHE_DIR).expanduser()
