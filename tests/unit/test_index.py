"""Ingest -> index -> retrieve on the hash embedder: incremental sync, deletes, locking, self-description."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.core.errors import IndexStateError, RagError
from rag.embed.embedder import HashEmbedder
from rag.index.integrity import check_integrity
from rag.index.layout import MANIFEST, faiss_path
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder, writer_lock


def ingest(folder: Path, cfg: RagConfig, **kwargs):  # type: ignore[no-untyped-def]
    return sync_folder(folder, cfg, HashEmbedder(), **kwargs)


def open_retriever(cfg: RagConfig) -> Retriever:
    return Retriever(KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder()), cfg.retrieve)


def statuses(report) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {f.source: f.status for f in report.files}


def test_first_ingest_indexes_every_file(corpus: Path, cfg: RagConfig) -> None:
    report = ingest(corpus, cfg)
    assert set(statuses(report).values()) == {"new"}
    assert report.totals()["files"] == 4 and report.chunks_indexed > 4
    assert check_integrity(cfg.index.dir) == []
    manifest = json.loads((Path(cfg.index.dir) / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["embedder"]["name"] == "hash-embedder"
    assert manifest["split"]["chunk_size"] == 120
    assert manifest["counts"]["chunks"] == report.chunks_indexed
    hits = open_retriever(cfg).search("磁盘满了怎么查看分区使用率")
    assert hits[0].chunk.source == "运维/磁盘.md"
    assert "df -h" in hits[0].chunk.text
    assert hits[0].chunk.heading[-1] == "空间不足"


def test_second_run_reparses_nothing(corpus: Path, cfg: RagConfig) -> None:
    first = ingest(corpus, cfg)
    second = ingest(corpus, cfg)
    assert set(statuses(second).values()) == {"unchanged"}
    assert second.generation == first.generation and second.chunks_indexed == 0


def test_changed_file_is_reparsed_alone_and_old_chunks_leave(corpus: Path, cfg: RagConfig) -> None:
    ingest(corpus, cfg)
    (corpus / "运维/打印机.txt").write_text("打印机卡纸时，先关闭电源，再打开后盖取出纸张。", encoding="utf-8")
    report = ingest(corpus, cfg)
    assert statuses(report) == {"en/vpn.md": "unchanged", "hr/年假.md": "unchanged", "运维/打印机.txt": "updated",
                                "运维/磁盘.md": "unchanged"}
    retriever = open_retriever(cfg)
    texts = [h.chunk.text for h in retriever.search("打印机", top_k=10)]
    assert any("卡纸" in t for t in texts) and not any("10.0.0.25" in t for t in texts)
    assert check_integrity(cfg.index.dir) == []


def test_deleted_file_leaves_the_index_and_open_readers_see_it(corpus: Path, cfg: RagConfig) -> None:
    ingest(corpus, cfg)
    retriever = open_retriever(cfg)  # opened before the delete: must notice the new generation
    assert any(h.chunk.source == "hr/年假.md" for h in retriever.search("年假 天数"))
    (corpus / "hr/年假.md").unlink()
    report = ingest(corpus, cfg)
    assert statuses(report)["hr/年假.md"] == "deleted"
    assert all(h.chunk.source != "hr/年假.md" for h in retriever.search("年假 天数", top_k=10))
    assert check_integrity(cfg.index.dir) == []


def test_keep_deleted_keeps_chunks(corpus: Path, cfg: RagConfig) -> None:
    ingest(corpus, cfg)
    (corpus / "hr/年假.md").unlink()
    report = ingest(corpus, cfg, keep_deleted=True)
    assert statuses(report)["hr/年假.md"] == "kept"
    assert any(h.chunk.source == "hr/年假.md" for h in open_retriever(cfg).search("年假"))


def test_other_embedder_is_a_clear_error_and_rebuild_fixes_it(corpus: Path, cfg: RagConfig) -> None:
    ingest(corpus, cfg)
    other = HashEmbedder(dim=64)
    with pytest.raises(IndexStateError, match="re-embed everything with --rebuild"):
        sync_folder(corpus, cfg, other)
    with pytest.raises(IndexStateError, match=r"was built with embedder 'hash-embedder' \(dim 256\)"):
        KnowledgeIndex.open(cfg.index.dir, cfg, other)
    report = sync_folder(corpus, cfg, other, rebuild=True)
    assert set(statuses(report).values()) == {"new"}
    index = KnowledgeIndex.open(cfg.index.dir, cfg, other)
    assert index.manifest["embedder"]["dim"] == 64
    assert check_integrity(cfg.index.dir) == []


def test_split_settings_change_resplits(corpus: Path, cfg: RagConfig) -> None:
    ingest(corpus, cfg)
    smaller = replace(cfg, split=replace(cfg.split, chunk_size=60, chunk_overlap=10))
    report = ingest(corpus, smaller)
    assert set(statuses(report).values()) == {"updated"}
    assert check_integrity(cfg.index.dir) == []


def test_missing_faiss_file_is_rebuilt_from_sqlite(corpus: Path, cfg: RagConfig) -> None:
    report = ingest(corpus, cfg)
    faiss_path(Path(cfg.index.dir), report.generation).unlink()
    hits = open_retriever(cfg).search("VPN gateway port", mode="dense")
    assert hits and hits[0].chunk.source == "en/vpn.md"


def test_bm25_only_index(corpus: Path, cfg: RagConfig) -> None:
    report = sync_folder(corpus, cfg, None)
    assert report.embedder == "none (BM25 only)"
    index = KnowledgeIndex.open(cfg.index.dir, cfg, None)
    retriever = Retriever(index, cfg.retrieve)
    assert retriever.effective_mode() == "bm25"
    assert retriever.search("WireGuard 客户端")[0].chunk.source == "en/vpn.md"


def test_second_writer_is_refused_with_a_clear_message(corpus: Path, cfg: RagConfig) -> None:
    directory = Path(cfg.index.dir)
    directory.mkdir(parents=True)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with writer_lock(directory, wait=False):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(10)
    try:
        with pytest.raises(IndexStateError, match="another ingest is writing to .*pass --wait"):
            ingest(corpus, cfg)
    finally:
        release.set()
        thread.join()
    assert ingest(corpus, cfg).count("new") == 4


def test_missing_folder_and_missing_index_errors(tmp_path: Path, cfg: RagConfig) -> None:
    with pytest.raises(RagError, match="does not exist"):
        ingest(tmp_path / "nope", cfg)
    with pytest.raises(IndexStateError, match=r"no index at .*; build one with: python ingest.py FOLDER --index"):
        KnowledgeIndex.open(tmp_path / "nothing", cfg)


def test_index_inside_the_knowledge_folder_is_skipped(corpus: Path, cfg: RagConfig) -> None:
    inside = replace(cfg, index=replace(cfg.index, dir=str(corpus / "_index")))
    report = ingest(corpus, inside)
    assert not any(f.source.startswith("_index") for f in report.files)
    assert set(statuses(ingest(corpus, inside)).values()) == {"unchanged"}


def test_failed_update_keeps_previous_version(corpus: Path, cfg: RagConfig) -> None:
    ingest(corpus, cfg)
    (corpus / "运维/打印机.txt").write_bytes(b"\x00\x01\x02\xff" * 500)  # now binary garbage
    report = ingest(corpus, cfg)
    failed = next(f for f in report.files if f.source == "运维/打印机.txt")
    assert failed.status == "failed" and failed.error.endswith("chunks are kept")
    assert any("10.0.0.25" in h.chunk.text for h in open_retriever(cfg).search("打印机 IP 地址", top_k=10))
    assert check_integrity(cfg.index.dir) == []
    again = ingest(corpus, cfg)
    assert "unchanged since the last ingest" in next(f for f in again.files if f.source == "运维/打印机.txt").error
