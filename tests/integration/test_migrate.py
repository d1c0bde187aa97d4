"""``python -m rag.migrate``: a FAISS index moves to Milvus (milvus-lite here) and answers the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rag.core.config import RagConfig, StoreConfig
from rag.core.errors import ConfigError, IndexStateError
from rag.embed.embedder import HashEmbedder
from rag.index.integrity import check_integrity
from rag.index.layout import MANIFEST
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder

pytest.importorskip("pymilvus", reason="pymilvus not installed: pip install -r requirements-extra.txt")
pytest.importorskip("milvus_lite", reason="milvus-lite not installed: pip install -r requirements-extra.txt")

from rag.cli.migrate import migrate_to_milvus, parse_target
from rag.index.milvus_sync import BINDING_FILE
from rag.store.milvus import MilvusStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
QUERIES = ["磁盘满了怎么查看分区使用率", "VPN gateway port", "年假 天数", "打印机 驱动 IP 地址"]


def dense_ids(directory: Path, cfg: RagConfig) -> list[list[int]]:
    index = KnowledgeIndex.open(directory, cfg, HashEmbedder())
    try:
        kind = "milvus" if isinstance(index.store, MilvusStore) else "faiss"
        # rounded scores with the ids: near-ties (float16 vectors) may swap order, the set of (id, score) may not
        return [[kind]] + [sorted((i, round(s, 4)) for i, s in index.search_dense(q, 5)) for q in QUERIES]  # type: ignore[list-item, misc]
    finally:
        index.close()


def test_migrate_then_both_backends_return_the_same_ids(corpus: Path, cfg: RagConfig, tmp_path: Path) -> None:
    sync_folder(corpus, cfg, HashEmbedder())  # flat FAISS: exact, like the FLAT collection below
    directory = Path(cfg.index.dir)
    before = dense_ids(directory, cfg)
    done = []
    result = migrate_to_milvus(directory, str(directory / "milvus.db"), index_type="FLAT",
                               progress=lambda n, total: done.append((n, total)))
    assert result.collection == "kbqa_index" and result.vectors == done[-1][0] == done[-1][1] > 0
    assert json.loads((directory / BINDING_FILE).read_text(encoding="utf-8"))["uri"] == "milvus.db"  # moves with DIR
    assert json.loads((directory / MANIFEST).read_text(encoding="utf-8"))["store"]["kind"] == "milvus"
    after = dense_ids(directory, cfg)  # the default config (store.kind: faiss) follows store.json
    assert before[0] == ["faiss"] and after[0] == ["milvus"] and after[1:] == before[1:]
    assert check_integrity(directory) == []
    (corpus / "hr/年假.md").unlink()  # later ingests keep the collection in line
    sync_folder(corpus, cfg, HashEmbedder())
    assert check_integrity(directory) == [] and not list(directory.glob("faiss-*.index"))
    (directory / BINDING_FILE).unlink()  # back to FAISS: rebuilt from SQLite
    assert dense_ids(directory, cfg)[0] == ["faiss"]


def test_migrate_errors_name_the_fix(corpus: Path, cfg: RagConfig, tmp_path: Path) -> None:
    with pytest.raises(IndexStateError, match=r"^no index at .*nothing; build one with: python ingest.py"):
        migrate_to_milvus(tmp_path / "nothing", str(tmp_path / "m.db"))
    sync_folder(corpus, cfg, None)
    with pytest.raises(IndexStateError, match=r"has no vectors \(it was built BM25-only\); nothing to move"):
        migrate_to_milvus(cfg.index.dir, str(tmp_path / "m.db"))
    sync_folder(corpus, cfg, HashEmbedder(), rebuild=True)
    migrate_to_milvus(cfg.index.dir, str(tmp_path / "m.db"), index_type="FLAT")
    with pytest.raises(IndexStateError, match=r"^Milvus collection 'kbqa_index' already exists at .*m.db; pass "
                                              r"--overwrite to replace it"):
        migrate_to_milvus(cfg.index.dir, str(tmp_path / "m.db"))
    assert migrate_to_milvus(cfg.index.dir, str(tmp_path / "m.db"), overwrite=True).index_type == "HNSW"
    sync_folder(corpus, cfg, HashEmbedder(dim=64), rebuild=True)  # now dim 64; the collection (dim 256) is rebuilt
    (Path(cfg.index.dir) / BINDING_FILE).unlink()
    other = tmp_path / "other"
    other.mkdir()
    taken = StoreConfig(kind="milvus", uri=str(tmp_path / "x.db"), collection="taken")
    store = MilvusStore.connect(taken, other, 256, create=True)  # a dim-256 collection under the name to be used
    store.close()
    with pytest.raises(IndexStateError, match=r"holds dim 256 vectors, this index has dim 64; replace it"):
        migrate_to_milvus(cfg.index.dir, str(tmp_path / "x.db"), collection="taken")
    with pytest.raises(IndexStateError, match=r"^cannot reach Milvus at http://127.0.0.1:1 .*fix store.uri"):
        migrate_to_milvus(cfg.index.dir, "http://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"^'milvus:x.db' is not faiss:... ; expected e.g. --from faiss:"):
        parse_target("milvus:x.db", "faiss", "--from faiss:indexes/default")


def test_cli_prints_one_summary_line_and_one_line_errors(corpus: Path, cfg: RagConfig, tmp_path: Path) -> None:
    sync_folder(corpus, cfg, HashEmbedder())
    command = [sys.executable, "-m", "rag.migrate", "--from", f"faiss:{cfg.index.dir}", "--to",
               f"milvus:{tmp_path / 'cli.db'}", "--index-type", "FLAT"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("migrated ") and "to Milvus collection 'kbqa_index'" in done.stdout
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].startswith("error: Milvus collection")
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr
