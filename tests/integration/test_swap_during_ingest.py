"""A file swapped between hashing and parsing (issue 17 item 2): the text indexed and the hash recorded always
describe the same bytes, and a link swapped in that leads outside the knowledge folder is never read."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from rag.core.config import LoadConfig, RagConfig
from rag.core.errors import LoadError
from rag.core.paths import open_inside
from rag.index.docstore import DocStore
from rag.index.layout import DOCSTORE
from rag.index.sync import sync_folder
from rag.ingest.load import snapshot_file

pytestmark = pytest.mark.integration

INSIDE = "# 内部\n\n内部文档 alpha 只在知识库里。\n"
OUTSIDE = "# 机密\n\n外部机密 omega 不在知识库里。\n"


def indexed_text(index: Path) -> str:
    store = DocStore(index / DOCSTORE, readonly=True)
    try:
        ids = set(store.chunk_id_set())
        return "\n".join(chunk.text for chunk in store.get_chunks(ids).values())
    finally:
        store.close()


def swap_after_hashing(target: Path, replace: Callable[[Path], object]) -> Callable[[str, int, int], None]:
    """A progress callback that runs ``replace(target)`` once every file has been hashed (before any is parsed)."""
    swapped: list[bool] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "hash" and done == total and not swapped:
            swapped.append(True)
            replace(target)
    return progress


def test_a_file_swapped_for_an_outside_link_is_never_read(tmp_path: Path, cfg: RagConfig) -> None:
    kb, index = tmp_path / "kb", tmp_path / "index"
    kb.mkdir()
    (kb / "a.md").write_text(INSIDE, encoding="utf-8")
    (kb / "b.md").write_text("# 其他\n\n另一份文档。\n", encoding="utf-8")
    secret = tmp_path / "secret.md"
    secret.write_text(OUTSIDE, encoding="utf-8")

    def to_link(target: Path) -> None:
        link = target.with_name(".swap")
        link.symlink_to(secret)
        os.replace(link, target)  # atomic: a.md is now a link to outside

    report = sync_folder(kb, cfg, None, index, progress=swap_after_hashing(kb / "a.md", to_link))
    entry = {f.source: f for f in report.files}["a.md"]
    assert (entry.status, entry.error_kind) == ("failed", "unreadable")
    assert "links outside the knowledge folder" in entry.error
    assert "omega" not in indexed_text(index)

    (kb / "a.md").unlink()
    (kb / "a.md").write_text(INSIDE, encoding="utf-8")  # the original is back: it must be parsed, not "unchanged"
    report = sync_folder(kb, cfg, None, index)
    assert {f.source: f.status for f in report.files}["a.md"] == "updated"  # parsed again (the failure recorded no hash)
    text = indexed_text(index)
    assert "alpha" in text and "omega" not in text


def test_the_hash_recorded_is_that_of_the_bytes_parsed(tmp_path: Path, cfg: RagConfig) -> None:
    kb, index = tmp_path / "kb", tmp_path / "index"
    kb.mkdir()
    (kb / "a.md").write_text(INSIDE, encoding="utf-8")
    changed = "# 内部\n\n改过的内部文档 beta。\n"
    report = sync_folder(kb, cfg, None, index, progress=swap_after_hashing(
        kb / "a.md", lambda target: target.write_text(changed, encoding="utf-8")))
    assert {f.source: f.status for f in report.files}["a.md"] == "new"
    store = DocStore(index / DOCSTORE, readonly=True)
    try:
        assert store.files()["a.md"].sha256 == hashlib.sha256(changed.encode()).hexdigest()
    finally:
        store.close()
    assert "beta" in indexed_text(index) and "alpha" not in indexed_text(index)
    assert {f.source: f.status for f in sync_folder(kb, cfg, None, index).files}["a.md"] == "unchanged"


def test_open_inside_refuses_links_out_and_non_files(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.md").write_text("x", encoding="utf-8")
    (tmp_path / "out.md").write_text("y", encoding="utf-8")
    (root / "in_link.md").symlink_to(root / "sub" / "a.md")  # a link inside the folder is followed
    (root / "out_link.md").symlink_to(tmp_path / "out.md")
    (root / "dir_link").symlink_to(tmp_path)  # a folder on the way that leads outside
    os.mkfifo(root / "pipe.md")
    fd = open_inside(root / "in_link.md", root)
    assert os.read(fd, 10) == b"x"
    os.close(fd)
    for name, message in [("out_link.md", "links outside"), ("dir_link/out.md", "links outside"),
                          ("pipe.md", "not a regular file")]:
        with pytest.raises(OSError, match=message):
            open_inside(root / name, root)


def test_a_copy_that_cannot_be_written_is_one_load_error(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("x", encoding="utf-8")
    with pytest.raises(LoadError) as caught:  # a full or missing temp folder: reported, the worker lives on
        snapshot_file(tmp_path / "a.md", tmp_path, tmp_path / "missing" / "tmp", LoadConfig())
    assert caught.value.kind == "unreadable"
    assert str(caught.value).startswith(f"cannot copy the file for parsing into {tmp_path / 'missing'}: ")
