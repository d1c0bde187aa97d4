"""Readers and writers at once: queries while an ingest runs, and two ingests started together.

Readers never take the writer lock and must see, for every chunk they get back, a version of its file that existed
(before or after the ingest), never an error; once the ingest is done they see every new file. Of two ingests
started at once one writes and the other exits 1 with the documented message (or, with --wait, queues behind it);
the result holds exactly the chunks a single fresh ingest produces.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig, load_config
from rag.embed.embedder import load_embedder
from rag.index.docstore import DocStore
from rag.index.integrity import check_integrity
from rag.index.layout import DOCSTORE
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from rag.ingest.worker import TEST_HOOKS_ENV

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OVERRIDES = ["embed.source=hash", "load.workers=1", "split.chunk_size=150", "split.chunk_overlap=20"]
TOPICS = ["磁盘", "网络", "打印机", "邮件", "数据库", "备份", "防火墙", "证书", "内核", "软件包"]
QUERIES = ["打印机故障怎么办", "数据库备份", "防火墙规则", "证书过期", "内核升级", "network maintenance",
           "unique token", "邮件服务器日志"]
READERS = 20


def doc_text(i: int, revised: bool = False) -> str:
    topic = TOPICS[i % len(TOPICS)]
    paragraphs = [f"第{p}节：{topic}的维护说明{'（修订版）' if revised else ''}。文档{i}的唯一标记 token{i:03d}x。"
                  + f"当{topic}出现故障时，先检查日志，再确认配置文件，最后联系管理员。" * 2 for p in range(8)]
    return f"# {topic} {i}\n\n" + "\n\n".join(paragraphs) + f"\n\nunique token{i:03d}x network maintenance\n"


def write_version(folder: Path, version: int) -> dict[str, str]:
    """Version 1: doc00-doc39. Version 2: doc00-doc04 deleted, doc05-doc09 revised, doc40-doc59 new (55 files)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f"doc{i:02d}.md": doc_text(i) for i in range(40)}
    if version == 2:
        wanted = {name: text for name, text in wanted.items() if int(name[3:5]) >= 5}
        wanted.update({f"doc{i:02d}.md": doc_text(i, revised=True) for i in range(5, 10)})
        wanted.update({f"doc{i:02d}.md": doc_text(i) for i in range(40, 60)})
    for old in folder.glob("*.md"):
        if old.name not in wanted:
            old.unlink()
    for name, text in wanted.items():
        (folder / name).write_text(text, encoding="utf-8")
    return wanted


def config(index: Path) -> RagConfig:
    return load_config(None, [*OVERRIDES, f"index.dir={index}"])


def ingest_command(folder: Path, index: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "ingest.py"), str(folder), "--index", str(index), "--quiet", *OVERRIDES, *extra]


def ingest_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def chunk_ids(index: Path) -> set[int]:
    docstore = DocStore(index / DOCSTORE, readonly=True)
    try:
        return docstore.chunk_id_set()
    finally:
        docstore.close()


def test_twenty_readers_during_an_ingest_see_only_real_versions_and_then_every_new_file(tmp_path: Path) -> None:
    folder, index = tmp_path / "kb", tmp_path / "index"
    cfg = config(index)
    old = write_version(folder, 1)
    sync_folder(folder, cfg, load_embedder(cfg.embed), index_dir=index)
    opened_before = KnowledgeIndex.open(index, cfg)
    new = write_version(folder, 2)
    assert len(new) == 55

    errors: list[str] = []
    seen_sources: set[str] = set()
    queries_run = [0]
    done = threading.Event()
    guard = threading.Lock()
    late_index: list[KnowledgeIndex] = []

    def check_hits(retriever: Retriever, query: str) -> None:
        for hit in retriever.search(query, top_k=5):
            chunk = hit.chunk
            versions = [text for text in (old.get(chunk.source), new.get(chunk.source)) if text is not None]
            flat = [" ".join(text.split()) for text in versions]
            if not any(" ".join(chunk.text.split())[:60] in text for text in flat):
                errors.append(f"{query!r}: chunk {chunk.id} of {chunk.source} matches no version of that file")
            with guard:
                seen_sources.add(chunk.source)

    def reader(number: int) -> None:
        try:
            if number % 2:  # half the readers open their own handle while the ingest runs
                index_handle = KnowledgeIndex.open(index, cfg)
                with guard:
                    late_index.append(index_handle)
            else:
                index_handle = opened_before
            retriever = Retriever(index_handle, cfg.retrieve)
            turn = 0
            while not done.is_set() or turn < 2:
                check_hits(retriever, QUERIES[(number + turn) % len(QUERIES)])
                turn += 1
                with guard:
                    queries_run[0] += 1
        except Exception as exc:  # any error at all is a failure of the readers-never-block design
            errors.append(f"reader {number}: {type(exc).__name__}: {exc}")

    process = subprocess.Popen(ingest_command(folder, index), env=ingest_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
    for thread in threads:
        thread.start()
    try:
        _, stderr = process.communicate(timeout=180)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=120)
    assert process.returncode == 0, stderr
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert queries_run[0] >= 2 * READERS

    assert check_integrity(index) == []
    for handle in [opened_before, *late_index]:  # every reader now sees the new version, without reopening
        retriever = Retriever(handle, cfg.retrieve)
        assert handle.stats()["files"] == len(new)
        for i in range(40, 60):
            hits = retriever.search(f"token{i:03d}x", top_k=3, mode="bm25")
            assert hits and hits[0].chunk.source == f"doc{i:02d}.md"
        for i in range(5):  # deleted files are no longer answered
            assert all(h.chunk.source != f"doc{i:02d}.md" for h in retriever.search(f"token{i:03d}x", mode="bm25"))
        handle.close()


def test_two_ingests_at_once_one_writes_and_the_other_exits_with_the_message(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder, index = tmp_path / "kb", tmp_path / "index"
    write_version(folder, 2)
    # A file whose parse sleeps until load.timeout_s: the winner holds the lock for at least that long.
    (folder / "slow__sleep__.txt").write_text("the test hook makes this parse hang\n", encoding="utf-8")
    env = ingest_env(**{TEST_HOOKS_ENV: "1"})
    command = ingest_command(folder, index, "load.timeout_s=4")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [(p.wait(timeout=180), p.stdout.read(), p.stderr.read()) for p in (first, second)]  # type: ignore[union-attr]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    _, _, loser_stderr = next(result for result in results if result[0] == 1)
    message = (f"error: another ingest is writing to {index.resolve()}; wait for it to finish "
               "(or pass --wait to queue behind it)")
    assert loser_stderr.strip().splitlines()[-1] == message
    assert check_integrity(index) == []

    assert chunk_ids(index) == reference_chunk_ids(folder, tmp_path / "fresh", monkeypatch)  # none lost, none extra


def reference_chunk_ids(folder: Path, fresh: Path, monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The chunk ids of one fresh in-process ingest of ``folder`` (with the same hanging test file)."""
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    cfg = load_config(None, [*OVERRIDES, "load.timeout_s=2", f"index.dir={fresh}"])
    report = sync_folder(folder, cfg, load_embedder(cfg.embed), index_dir=fresh)
    assert [f.source for f in report.files if f.status == "failed"] == ["slow__sleep__.txt"]
    return chunk_ids(fresh)


def test_two_ingests_with_wait_both_succeed_and_lose_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, index = tmp_path / "kb", tmp_path / "index"
    write_version(folder, 2)
    (folder / "slow__sleep__.txt").write_text("the test hook makes this parse hang\n", encoding="utf-8")
    env = ingest_env(**{TEST_HOOKS_ENV: "1"})
    command = ingest_command(folder, index, "load.timeout_s=3", "--wait", "--retry-failed")
    started = time.monotonic()
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = [(p.wait(timeout=180), p.stdout.read(), p.stderr.read()) for p in processes]  # type: ignore[union-attr]
    assert [code for code, _, _ in results] == [0, 0], results
    assert time.monotonic() - started >= 6  # queued: each held the lock through its own 3 s timeout
    summaries = sorted(stdout.strip().splitlines()[-1] for _, stdout, _ in results)
    assert any("55 new" in line for line in summaries) and any("55 unchanged" in line for line in summaries)
    assert check_integrity(index) == []
    assert chunk_ids(index) == reference_chunk_ids(folder, tmp_path / "fresh", monkeypatch)
