"""kill -9 an ingest at random moments: the index must always open, pass the integrity check and hold, for every
file, either its old or its new version (never a mix)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.answer.retrieve import Retriever
from rag.core.config import load_config
from rag.index.docstore import DocStore
from rag.index.integrity import check_integrity
from rag.index.layout import DOCSTORE
from rag.index.reader import KnowledgeIndex
from rag.index.sync import file_sha256

REPO = Path(__file__).resolve().parents[2]
TOPICS = ["磁盘", "网络", "打印机", "邮件", "数据库", "备份", "防火墙", "证书", "内核", "软件包"]


def make_folder(folder: Path, version: int, n_files: int = 30) -> None:
    """Version 1 and 2 differ: some files changed, some deleted, some added."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.md"):
        old.unlink()
    rng = random.Random(7)
    for i in range(n_files):
        if version == 2 and i % 5 == 0:
            continue  # deleted in version 2
        changed = version == 2 and i % 3 == 0
        topic = TOPICS[i % len(TOPICS)]
        paragraphs = [
            f"第{p}节：{topic}的维护说明{'（修订版）' if changed else ''}。编号 {i}-{p}-{rng.randint(0, 9999)}。"
            + f"当{topic}出现故障时，先检查日志，再确认配置文件，最后联系管理员。" * 3
            for p in range(12)
        ]
        (folder / f"doc{i:02d}.md").write_text(f"# {topic} {i}\n\n" + "\n\n".join(paragraphs), encoding="utf-8")
    if version == 2:
        for i in range(n_files, n_files + 5):
            (folder / f"doc{i:02d}.md").write_text(f"# 新文档 {i}\n\n新增的说明 {i}。" * 40, encoding="utf-8")


def run_ingest(folder: Path, index: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(REPO / "ingest.py"), str(folder), "--index", str(index), "--quiet", "embed.source=hash",
         "load.workers=1", "split.chunk_size=150", "split.chunk_overlap=20"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )


def versions(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in folder.glob("*.md")}


def assert_old_or_new(index: Path, old: dict[str, str], new: dict[str, str]) -> None:
    assert check_integrity(index) == []
    docstore = DocStore(index / DOCSTORE, readonly=True)
    try:
        for source, record in docstore.files().items():
            assert record.sha256 in {old.get(source), new.get(source)}, source
    finally:
        docstore.close()
    cfg = load_config(None, ["embed.source=hash", f"index.dir={index}"])
    retriever = Retriever(KnowledgeIndex.open(index, cfg), cfg.retrieve)
    assert retriever.search("打印机故障检查日志")  # opens and answers


def crash_trials(tmp_path: Path, trials: int) -> None:
    folder, index = tmp_path / "kb", tmp_path / "index"
    make_folder(folder, 1)
    old = versions(folder)
    assert run_ingest(folder, index).wait(120) == 0
    make_folder(folder, 2)
    new = versions(folder)
    started = time.perf_counter()
    assert run_ingest(folder, index).wait(120) == 0  # how long a full update takes
    duration = time.perf_counter() - started
    rng = random.Random(1234)
    for trial in range(trials):
        make_folder(folder, 1 + trial % 2)  # alternate directions so every trial has work to do
        process = run_ingest(folder, index)
        time.sleep(rng.uniform(0.0, duration))
        os.killpg(process.pid, signal.SIGKILL)  # the ingest and its parser workers, mid-flight
        process.wait()
        assert_old_or_new(index, old, new)
    make_folder(folder, 2)
    assert run_ingest(folder, index).wait(120) == 0  # and a later ingest completes the job
    assert_old_or_new(index, new, new)


@pytest.mark.integration
def test_kill_9_during_ingest_never_corrupts(tmp_path: Path) -> None:
    crash_trials(tmp_path, trials=6)


@pytest.mark.slow
def test_kill_9_fifty_trials(tmp_path: Path) -> None:
    crash_trials(tmp_path, trials=50)
