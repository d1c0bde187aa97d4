"""Hostile names for uploads, index folders and adapters: nothing is written or read outside the allowed folder.

Each case snapshots the whole temporary tree outside the allowed folder before and after (paths, sizes, contents
hashes) and checks it did not change; a secret file and a secret adapter / index sit right next to the allowed
folder, and their marker text must never appear in anything the functions return.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import pytest

from rag.core.errors import RagError
from rag.models import adapters
from rag.webui import kb
from rag.webui.uploads import delete_document, save_upload

SECRET = "TOP-SECRET-MARKER-6f1c"
HOSTILE_NAMES = [
    "../x", "../../x", "..\\x", "..\\..\\x", "/etc/passwd", "C:\\Windows\\x", "C:/Windows/x", "x\x00.md", "a" * 300,
    "CON", "NUL.txt", "aux", "com1.md", "\u202etxt.exe", "．．／x", "．．", "ＣＯＮ", "\ufb01le", "..", ".", ".hidden",
    "trail.", "trail ", "new\nline", "~", "~/x", "%2e%2e%2fx", "%2e%2e/x", "x/../../y", "link_out", "secret",
    "\u200b..", "\\\\server\\share\\x", "dir/", "\u3000",
]


def snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Every path under ``root`` outside ``skip`` -> a content hash ("dir", or the link target for symlinks)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == skip or skip in here.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            if path == skip:
                continue
            if path.is_symlink():
                out[str(path)] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[str(path)] = "dir"
            else:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """tmp_path/allowed is the folder under test; next to it, a secret file, a secret index and a secret adapter."""
    (tmp_path / "allowed").mkdir()
    (tmp_path / "secret").write_text(SECRET, encoding="utf-8")
    (tmp_path / "x").write_text("victim file outside the allowed folder", encoding="utf-8")
    secret_adapter = tmp_path / "secret_adapter"
    secret_adapter.mkdir()
    (secret_adapter / adapters.PEFT_CONFIG).write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}))
    (secret_adapter / adapters.WEIGHTS).write_bytes(b"not really weights")
    (secret_adapter / adapters.METADATA_FILE).write_text(json.dumps(
        {"name": "secretname", "base_model": SECRET, "template": SECRET, "dataset": SECRET}), encoding="utf-8")
    (tmp_path / "secret_index").mkdir()
    (tmp_path / "secret_index" / "docstore.sqlite").write_text(SECRET, encoding="utf-8")
    return tmp_path


def names_with_suffix() -> list[str]:
    return [*HOSTILE_NAMES, *(name + ".md" for name in HOSTILE_NAMES), *("x.md/" + n for n in ("..", "."))]


def test_the_matrix_is_big_enough() -> None:
    assert len(HOSTILE_NAMES) >= 20


# --- uploads ----------------------------------------------------------------------------------------------------------


def test_uploads_with_hostile_names_stay_in_the_knowledge_folder(sandbox: Path) -> None:
    allowed = sandbox / "allowed"
    os.symlink(sandbox / "x", allowed / "link_out.md")  # a name already taken by a link out of the folder
    before = snapshot(sandbox, allowed)
    saved, refused = 0, 0
    for name in names_with_suffix():
        try:
            result = save_upload(allowed, name, b"# upload\n\ncontent of " + name.encode("utf-8", "replace"),
                                    1 << 20, [".md", ".txt"])
        except RagError as exc:  # UploadError: refused with a reason
            refused += 1
            assert SECRET not in str(exc)
            continue
        saved += 1
        assert result.path.parent.resolve() == allowed.resolve() and not result.path.is_symlink(), name
        stored = result.path.name
        assert "/" not in stored and "\\" not in stored and "\x00" not in stored and "\n" not in stored, stored
        assert not stored.startswith(".") and not stored.endswith((".", " ")) and len(stored) <= 110, stored
        assert stored.split(".")[0].lower() not in {"con", "nul", "aux", "com1"}, stored
        assert all(ch not in stored for ch in "\u202e\u200b"), stored
    assert saved and refused  # both outcomes were exercised
    assert snapshot(sandbox, allowed) == before  # zero writes outside, the victim and the link target untouched
    assert (sandbox / "x").read_text(encoding="utf-8") == "victim file outside the allowed folder"
    assert not [p for p in allowed.iterdir() if p.name.startswith(".upload-")]  # no temp file left behind


@pytest.mark.parametrize("source", [n for n in names_with_suffix() if n not in ("x.md/.",)])
def test_deleting_a_document_by_a_hostile_name_never_touches_outside(sandbox: Path, source: str) -> None:
    allowed = sandbox / "allowed"
    (allowed / "keep.md").write_text("keep", encoding="utf-8")
    os.symlink(sandbox / "x", allowed / "link_out")
    before = snapshot(sandbox, allowed)
    with contextlib.suppress(RagError):  # refused with a reason; any other exception fails the test
        delete_document(allowed, source)
    assert snapshot(sandbox, allowed) == before


# --- index names ------------------------------------------------------------------------------------------------------


def test_index_listing_offers_only_indexes_inside_the_root(sandbox: Path) -> None:
    root = sandbox / "allowed"
    for name in HOSTILE_NAMES:
        path = root / name
        if "\x00" in name or "/" in name.rstrip("/") or name in (".", "..") or len(name.encode()) > 255:
            continue  # not a possible folder name on this system: the path resolves elsewhere (checked below)
        path.mkdir(exist_ok=True)
        (path / "docstore.sqlite").write_text("index " + name, encoding="utf-8")
    os.symlink(sandbox / "secret_index", root / "index_link_out")  # an index folder that is a link out of the root
    before = snapshot(sandbox, root)
    listed = kb.list_indexes(root, always=root / "default")
    assert listed, "the hostile-named folders inside the root are still indexes"
    for option in listed:
        assert Path(option).resolve().is_relative_to(root.resolve()), option
    assert all(SECRET not in option for option in listed)
    assert snapshot(sandbox, root) == before


# --- adapters ---------------------------------------------------------------------------------------------------------


def _adapter(folder: Path, name: str) -> None:
    folder.mkdir(parents=True)
    (folder / adapters.PEFT_CONFIG).write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}))
    (folder / adapters.WEIGHTS).write_bytes(b"weights")
    (folder / adapters.METADATA_FILE).write_text(json.dumps(
        {"name": name, "base_model": "THUDM/chatglm3-6b", "template": "chatglm3"}), encoding="utf-8")


def test_adapter_names_and_links_never_reach_outside_the_registry(sandbox: Path) -> None:
    registry = sandbox / "allowed"
    _adapter(registry / "good", "good")
    os.symlink(sandbox / "secret_adapter", registry / "link_out")  # a whole adapter folder linked from outside
    _adapter(registry / "leaky", "leaky")  # a real folder whose metadata file is a link to a file outside
    (registry / "leaky" / adapters.METADATA_FILE).unlink()
    os.symlink(sandbox / "secret_adapter" / adapters.METADATA_FILE, registry / "leaky" / adapters.METADATA_FILE)
    before = snapshot(sandbox, registry)

    infos = adapters.list_adapters(registry)
    shown = repr(infos)
    assert SECRET not in shown and "secretname" not in shown
    verdicts = {info.name: info.usable for info in infos}
    assert verdicts == {"good": True, "leaky": False, "link_out": False}
    for name in [*HOSTILE_NAMES, "secret_adapter", "../secret_adapter", "link_out", "leaky"]:
        info = adapters.find_adapter(registry, name)
        assert not info.usable and SECRET not in repr(info), name
        if adapters.is_safe_name(name):  # a name it accepts is one folder right inside the registry
            assert Path(os.path.normpath(registry / name)).parent == registry and "\x00" not in name, name
    for name in HOSTILE_NAMES:
        if adapters.is_safe_name(name):
            continue
        with pytest.raises(RagError, match="not a safe folder name"):
            adapters.write_metadata(registry / "good", name=name, base_model="b", template="t")
    assert snapshot(sandbox, registry) == before
