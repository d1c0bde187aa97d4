"""Where the project keeps files, and how it writes them so that a crash never leaves half a file."""

from __future__ import annotations

import errno
import json
import os
import stat
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


def open_inside(path: str | Path, root: str | Path | None) -> int:
    """Open a regular file for reading, only if it really lies under ``root``; return the file descriptor.

    A knowledge folder may hold links to files inside it, so the path is resolved first; the file itself is then
    opened with ``O_NOFOLLOW`` (a link swapped in after resolving fails), and where the descriptor really landed is
    checked afterwards (``/proc/self/fd`` on Linux, else the device and inode against the resolved path), so a
    folder on the way swapped for a link to outside is caught too. ``O_NONBLOCK``: a FIFO swapped in never blocks.
    Read from the descriptor, and hash and parse those same bytes.

    Raises:
        OSError: the file is outside ``root`` (``EXDEV``), not a regular file (``EINVAL``), or cannot be opened.
    """
    real = os.path.realpath(path)
    real_root = os.path.realpath(root) if root is not None else None

    def outside(where: str) -> bool:
        return real_root is not None and not Path(where).is_relative_to(real_root)

    if outside(real):
        raise OSError(errno.EXDEV, "it links outside the knowledge folder", str(path))
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(real, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        try:
            landed = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: the resolved path must still name this very file
            now = os.stat(real, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
                raise OSError(errno.EXDEV, "the file was replaced while it was opened", str(path)) from None
        else:
            if outside(landed):
                raise OSError(errno.EXDEV, "it links outside the knowledge folder", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def same_file(path: str | Path, fd: int) -> bool:
    """Whether ``path`` (links followed) still names the file open as ``fd``: the re-check after reading it."""
    try:
        now, then = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (then.st_dev, then.st_ino)
