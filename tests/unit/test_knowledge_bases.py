"""Knowledge bases made from the page (rag.webui.knowledge_bases): folders inside the root, one index each."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.core.config import load_config
from rag.core.errors import ConfigError
from rag.webui.knowledge_bases import config_for, create_kb, delete_kb, read_kb, rename_kb


def test_create_rename_delete(tmp_path: Path) -> None:
    root, indexes = tmp_path / "docs", tmp_path / "indexes"
    made = create_kb("  人事 制度 ", "", root, indexes)
    assert made.name == "人事 制度" and Path(made.folder) == (root / "人事 制度").resolve()
    assert Path(made.folder).is_dir() and read_kb(made.index_dir) == made
    cfg = config_for(load_config(None, []), made.index_dir)
    assert cfg.knowledge_dir == made.folder and cfg.index.dir == made.index_dir
    assert config_for(load_config(None, []), tmp_path).knowledge_dir == "knowledge"  # not made here: unchanged

    assert rename_kb(made.index_dir, "HR").name == "HR" and read_kb(made.index_dir).name == "HR"  # type: ignore[union-attr]
    (Path(made.folder) / "a.md").write_text("x", encoding="utf-8")
    delete_kb(made.index_dir, indexes)
    assert not Path(made.index_dir).exists() and (Path(made.folder) / "a.md").is_file()  # documents stay


@pytest.mark.parametrize(("name", "folder", "message"), [
    ("", "", "a knowledge base needs a name"),
    ("x" * 61, "", "use at most 60"),
    ("///", "", "no characters usable in a folder name"),
    ("hr", "../outside", "folder '../outside' is not inside"),
    ("hr", "/etc", "folder '/etc' is not inside"),
    ("hr", ".", "folder '.' is not inside"),
])
def test_bad_names_and_folders_are_one_clear_error(tmp_path: Path, name: str, folder: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_kb(name, folder, tmp_path / "docs", tmp_path / "indexes")
    assert not (tmp_path / "indexes").exists()


def test_a_taken_name_and_foreign_indexes_are_refused(tmp_path: Path) -> None:
    create_kb("hr", "", tmp_path, tmp_path / "indexes")
    with pytest.raises(ConfigError, match="already exists"):
        create_kb("hr", "other", tmp_path, tmp_path / "indexes")
    configured = tmp_path / "indexes" / "default"
    configured.mkdir()
    with pytest.raises(ConfigError, match="was not made from the page"):
        delete_kb(configured, tmp_path / "indexes")
    with pytest.raises(ConfigError, match="was not made from the page"):
        rename_kb(configured, "x")
    assert configured.is_dir()
