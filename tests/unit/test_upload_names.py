"""Upload names and races (issue 17 items 4 and 5): a long CJK name is shortened to the file system's 255 bytes
keeping its suffix, a write the file system refuses is an UploadError (one line, never an OSError), and concurrent
uploads of one name each keep their own file."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from rag.webui.uploads import MAX_NAME_BYTES, UploadError, safe_filename, save_upload

SUFFIXES = [".md", ".pdf", ".txt"]
MB = 2**20


def test_long_cjk_name_is_cut_to_255_bytes_keeping_the_suffix(tmp_path: Path) -> None:
    name = "关于" * 45 + ".md"  # 90 characters, 270 bytes of stem: passes the 100-character cut
    safe = safe_filename(name, SUFFIXES)
    assert safe.endswith(".md") and safe.startswith("关于关于")
    assert len(safe.encode()) <= MAX_NAME_BYTES - len(" (9999)")  # room left for a copy number
    saved = save_upload(tmp_path, name, "# 标题\n正文".encode(), MB, SUFFIXES)
    assert (saved.status, saved.path.read_text(encoding="utf-8")) == ("new", "# 标题\n正文")
    again = save_upload(tmp_path, name, b"# other\n", MB, SUFFIXES)  # the copy's name fits too
    assert again.status == "renamed" and again.source == safe[:-3] + " (2).md"
    mixed = safe_filename("a" + "é" * 200 + ".txt", SUFFIXES)  # never cut inside a 2-byte character
    assert mixed.encode().decode() == mixed and mixed.endswith(".txt")


def test_a_refused_write_is_an_upload_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("rag.webui.uploads.os.fsync", full)
    with pytest.raises(UploadError) as caught:
        save_upload(tmp_path, "报告.md", b"# x\n", MB, SUFFIXES)
    assert (caught.value.kind, str(caught.value)) == ("not_saved", "报告.md was not saved: No space left on device")
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_concurrent_uploads_of_one_name_keep_every_file(tmp_path: Path) -> None:
    count = 20
    start = threading.Barrier(count)
    results: list[object] = [None] * count

    def upload(index: int) -> None:
        start.wait()
        results[index] = save_upload(tmp_path, "report.md", f"# version {index}\n".encode(), MB, SUFFIXES)

    threads = [threading.Thread(target=upload, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(getattr(result, "status", "?") for result in results)
    assert statuses == ["new"] + ["renamed"] * (count - 1)
    files = sorted(tmp_path.iterdir())
    assert len(files) == count  # no temp file left, none lost
    assert sorted(path.read_text() for path in files) == sorted(f"# version {index}\n" for index in range(count))
    assert {getattr(result, "source", "") for result in results} == {path.name for path in files}
    same = save_upload(tmp_path, "report.md", b"# version 7\n", MB, SUFFIXES)  # already there under a copy's name
    assert same.status == "unchanged" and same.path.read_text() == "# version 7\n"
