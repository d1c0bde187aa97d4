"""Index faults (issue 17 item 8): a damaged docstore, a read-only mount, a full disk. Each is one line that says
what is broken and how to recover, never a traceback; ``ingest.py FOLDER --rebuild`` recovers a damaged index by
moving the broken file aside; a read-only index can still be searched.

The read-only and full-disk cases mount a real read-only bind mount / a 512 KiB tmpfs inside ``unshare -rm`` (a
user + mount namespace: no root needed where unprivileged namespaces are allowed) and skip where they are not; a
full disk is also simulated in-process, as SQLite reports it (SQLITE_FULL after rolling the transaction back).
"""

from __future__ import annotations

import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import ingest
from rag.cli import search
from rag.cli.common import run_cli
from rag.core.config import REPO_ROOT, RagConfig
from rag.embed.embedder import HashEmbedder
from rag.index.docstore import DocStore
from rag.index.layout import DOCSTORE
from rag.index.sync import sync_folder
from tests.conftest import write_corpus

pytestmark = pytest.mark.integration
OVERRIDES = ["embed.source=hash", "load.workers=1", "split.chunk_size=120", "split.chunk_overlap=20"]


def run(module: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run_cli(module.main, module.parse_args(argv))  # type: ignore[attr-defined]
    out, err = capsys.readouterr()
    return code, out, err


def build(tmp_path: Path, cfg: RagConfig) -> tuple[Path, Path]:
    kb, index = write_corpus(tmp_path / "kb"), tmp_path / "index"
    sync_folder(kb, cfg, HashEmbedder(), index)
    return kb, index


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_docstore_names_the_fix_and_rebuild_recovers(tmp_path: Path, cfg: RagConfig, damage: str,
                                                              capsys: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    kb, index = build(tmp_path, cfg)
    store = index / DOCSTORE
    if damage == "garbage":
        store.write_bytes(b"\x13\x37 not a database " * 4000)
    else:
        with open(store, "r+b") as handle:
            handle.truncate(store.stat().st_size // 3)
    for module, argv in [(search, ["VPN", "--index", str(index), *OVERRIDES]),
                         (ingest, [str(kb), "--index", str(index), "--quiet", *OVERRIDES])]:
        code, _, err = run(module, argv, capsys)
        assert code == 1 and "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
        assert errors[0].startswith(f"error: {store} is damaged (")
        assert errors[0].endswith(f"; rebuild the index from your documents with: python ingest.py FOLDER --index "
                                  f"{index} --rebuild (the damaged file is moved aside)")

    code, out, err = run(ingest, [str(kb), "--index", str(index), "--quiet", "--rebuild", *OVERRIDES], capsys)
    assert code == 0, err
    assert "the docstore was damaged" in caplog.text and "moved it to" in caplog.text
    assert len(list(index.glob(f"{DOCSTORE}.damaged-*"))) >= 1
    code, out, _ = run(search, ["VPN", "--index", str(index), "--k", "1", *OVERRIDES], capsys)
    assert code == 0 and "vpn" in out.lower()


def test_full_disk_is_reported_and_the_index_kept(tmp_path: Path, cfg: RagConfig, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    kb, index = build(tmp_path, cfg)
    before = DocStore(index / DOCSTORE, readonly=True)
    files_before, generation = before.files(), before.generation
    before.close()
    (kb / "new.md").write_text("# 新文档\n\n这是一份新加入的文档，用来触发写入。\n", encoding="utf-8")

    def full(self: DocStore, *args: object) -> None:
        self.conn.execute("ROLLBACK")  # what SQLite does on SQLITE_FULL in a write transaction
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(DocStore, "add_chunks", full)
    code, _, err = run(ingest, [str(kb), "--index", str(index), "--quiet", *OVERRIDES], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: disk full while writing the index at {index} (database or disk is full): free some space and run "
        "the ingest again; the index keeps everything committed before")
    after = DocStore(index / DOCSTORE, readonly=True)
    assert after.files() == files_before and after.generation == generation  # nothing half-written
    after.close()


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)


needs_unshare = pytest.mark.skipif(not unshare_works(), reason="unshare -rm (user + mount namespaces) not allowed here")
PY = shlex.quote(sys.executable)
ARGS = " ".join(OVERRIDES)


@needs_unshare
def test_read_only_index_searches_and_ingest_says_read_only(tmp_path: Path, cfg: RagConfig) -> None:
    kb, index = build(tmp_path, cfg)
    mount = tmp_path / "ro"
    mount.mkdir()
    result = in_namespace(
        f"mount --bind {index} {mount} && mount -o remount,bind,ro {mount} || exit 99\n"
        f"{PY} -m rag.cli.search VPN --index {mount} --k 1 {ARGS}; echo search_rc=$?\n"
        f"{PY} ingest.py {kb} --index {mount} --quiet {ARGS}; echo ingest_rc=$?\n")
    if result.returncode == 99:
        pytest.skip(f"cannot make a read-only bind mount here: {result.stderr.strip()[-200:]}")
    assert "search_rc=0" in result.stdout and "vpn" in result.stdout.lower(), result.stderr
    assert "ingest_rc=1" in result.stdout and "Traceback" not in result.stderr
    assert (f"error: the index at {mount} is read-only (Read-only file system): searching it works, an ingest needs "
            "write access; remount it read-write or ingest into another folder with --index") in result.stderr


@needs_unshare
def test_a_real_full_disk(tmp_path: Path) -> None:
    kb = tmp_path / "big"
    kb.mkdir()
    for number in range(30):
        paragraphs = [f"第 {number}-{p} 段：" + "星河科技网络服务台报销流程年假打印机" * (20 + p % 7) for p in range(25)]
        (kb / f"d{number}.md").write_text(f"# 文档 {number}\n\n" + "\n\n".join(paragraphs), encoding="utf-8")
    mount = tmp_path / "small"
    mount.mkdir()
    result = in_namespace(
        f"mount -t tmpfs -o size=512k tmpfs {mount} || exit 99\n"
        f"{PY} ingest.py {kb} --index {mount}/index --quiet {ARGS}; echo ingest_rc=$?\n")
    if result.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[-200:]}")
    assert "ingest_rc=1" in result.stdout and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"error: disk full while writing the index at {mount}/index" in result.stderr
    assert "cannot rollback" not in result.stderr
