"""Knowledge bases made from the page: a name, a documents folder inside the allowed root, and an index of its own.

Each one is an index folder under the indexes root whose ``knowledge_base.json`` names it and its documents folder,
so the folder describes itself and the page finds every knowledge base by listing the indexes. The configured one
(``knowledge_dir`` + ``index.dir``) is always there and cannot be renamed or deleted from the page. Deleting a
knowledge base deletes its index, never its documents.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from rag.core.config import RagConfig
from rag.core.errors import ConfigError

KB_FILE = "knowledge_base.json"
MAX_NAME_CHARS = 60
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]+')


@dataclass(frozen=True)
class KnowledgeBase:
    """A knowledge base made from the page."""

    name: str
    folder: str  # the documents folder (absolute)
    index_dir: str


def folder_name(name: str) -> str:
    """A folder name for ``name``: its words without path or reserved characters ("" when none are left)."""
    return _UNSAFE.sub("_", " ".join(name.split())).strip(" ._")[:MAX_NAME_CHARS]


def _clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise ConfigError("a knowledge base needs a name; type a few words, e.g. 人事制度")
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"the name {name[:20]!r}… is {len(name)} characters; use at most {MAX_NAME_CHARS}")
    return name


def _write(index_dir: Path, kb: KnowledgeBase) -> None:
    data = {"name": kb.name, "folder": kb.folder}
    handle, temp = tempfile.mkstemp(dir=index_dir, prefix=".kb-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(data, out, ensure_ascii=False, indent=2)
    os.replace(temp, index_dir / KB_FILE)


def read_kb(index_dir: str | Path) -> KnowledgeBase | None:
    """The knowledge base an index folder belongs to, or None (not made from the page, or an unreadable file)."""
    try:
        data = json.loads((Path(index_dir) / KB_FILE).read_text(encoding="utf-8"))
        return KnowledgeBase(str(data["name"]), str(data["folder"]), str(index_dir))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def create_kb(name: str, folder: str, knowledge_root: str | Path, indexes_root: str | Path) -> KnowledgeBase:
    """Make a knowledge base: its documents folder (created if missing) and its index folder with its description.

    Args:
        name: what the page calls it.
        folder: its documents folder, relative to ``knowledge_root`` ("" = a folder named after ``name``).
        knowledge_root: the folder that every documents folder must be inside.
        indexes_root: where its index folder goes (named after ``name``).

    Raises:
        ConfigError: an empty or too long name, a folder outside ``knowledge_root``, or a name already taken.
    """
    name = _clean_name(name)
    stem = folder_name(name)
    if not stem:
        raise ConfigError(f"the name {name!r} has no characters usable in a folder name; use letters or digits")
    root = Path(knowledge_root).resolve()
    wanted = Path(folder.strip() or stem).expanduser()
    documents = (wanted if wanted.is_absolute() else root / wanted).resolve()
    if not documents.is_relative_to(root) or documents == root:
        raise ConfigError(f"folder {folder.strip() or stem!r} is not inside {root}; choose a folder inside it, "
                          f"e.g. {stem}")
    index_dir = Path(indexes_root) / stem
    if index_dir.exists():
        raise ConfigError(f"a knowledge base or index named {stem!r} already exists in {indexes_root}; "
                          "choose another name")
    if documents.exists() and not documents.is_dir():
        raise ConfigError(f"{documents} is a file, not a folder; choose another folder")
    documents.mkdir(parents=True, exist_ok=True)
    index_dir.mkdir(parents=True)
    kb = KnowledgeBase(name, str(documents), str(index_dir))
    _write(index_dir, kb)
    return kb


def rename_kb(index_dir: str | Path, name: str) -> KnowledgeBase:
    """Give a knowledge base another name (its folders stay where they are)."""
    kb = read_kb(index_dir)
    if kb is None:
        raise ConfigError(f"{index_dir} was not made from the page; rename it by editing the config instead")
    renamed = replace(kb, name=_clean_name(name))
    _write(Path(index_dir), renamed)
    return renamed


def delete_kb(index_dir: str | Path, indexes_root: str | Path) -> None:
    """Delete a knowledge base's index folder (its documents stay); only one made from the page, inside the root."""
    index_dir = Path(index_dir)
    if read_kb(index_dir) is None:
        raise ConfigError(f"{index_dir} was not made from the page; it is not deleted from here")
    if not index_dir.resolve().is_relative_to(Path(indexes_root).resolve()) or index_dir.is_symlink():
        raise ConfigError(f"{index_dir} is not inside {indexes_root}; it is not deleted from here")
    shutil.rmtree(index_dir)


def config_for(cfg: RagConfig, index_dir: str | Path) -> RagConfig:
    """``cfg`` with the documents folder and index of the knowledge base at ``index_dir`` (unchanged for others)."""
    kb = read_kb(index_dir)
    if kb is None:
        return cfg
    return replace(cfg, knowledge_dir=kb.folder, index=replace(cfg.index, dir=str(index_dir)))
