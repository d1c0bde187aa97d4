"""One store suite, two backends: FaissStore (flat) and MilvusStore on milvus-lite (a tmp_path file).

The protocol tests run on both; the index life-cycle tests (sync, edit, delete, crash, two readers) run on Milvus,
where the collection lives outside the index folder and must be kept in line with the SQLite docstore.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.core.config import RagConfig, StoreConfig
from rag.core.errors import ConfigError, IndexStateError
from rag.embed.embedder import HashEmbedder
from rag.index.docstore import DocStore
from rag.index.integrity import check_integrity
from rag.index.layout import DOCSTORE, MANIFEST
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from rag.store.faiss import FaissStore

pymilvus = pytest.importorskip("pymilvus", reason="pymilvus not installed: pip install -r requirements-extra.txt")
pytest.importorskip("milvus_lite", reason="milvus-lite not installed: pip install -r requirements-extra.txt")

from rag.index import milvus_sync  # noqa: E402  (after the skip: the module itself imports pymilvus lazily)
from rag.index.milvus_sync import BINDING_FILE  # noqa: E402
from rag.store import milvus  # noqa: E402
from rag.store.milvus import MilvusStore  # noqa: E402

pytestmark = pytest.mark.integration
DIM = 32


def clustered(n: int, seed: int, clusters: int = 8) -> np.ndarray:
    """[n, DIM] unit vectors around centroids shared by every seed, so base vectors and queries match."""
    centroids = np.random.default_rng(0).standard_normal((clusters, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    points = centroids[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def chunk_ids(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 7919 + 3  # sparse and large, like real chunk ids


def milvus_cfg(folder: Path, **extra: Any) -> StoreConfig:
    return StoreConfig(**{"kind": "milvus", "uri": str(folder / "vectors.db"), "milvus_index": "FLAT", **extra})


class Backend:
    """Makes empty stores and reopens them, the same way for each backend."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name, self.folder = name, folder
        self.opened: list[Any] = []

    def new(self) -> Any:
        if self.name == "faiss":
            store: Any = FaissStore(DIM, StoreConfig(faiss_index="flat"))
        else:
            store = MilvusStore.connect(milvus_cfg(self.folder), self.folder, DIM, create=True)
        self.opened.append(store)
        return store

    def reopen(self, store: Any) -> Any:
        if self.name == "faiss":
            store.save(self.folder / "s.index")
            return FaissStore.load(self.folder / "s.index", DIM, StoreConfig(faiss_index="flat"))
        store.save()
        store.close()  # the last user releases the milvus-lite folder: the reopen reads it back from disk
        again = MilvusStore.connect(milvus_cfg(self.folder), self.folder, DIM, create=False)
        self.opened.append(again)
        return again


@pytest.fixture(params=["faiss", "milvus"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = Backend(request.param, tmp_path)
    yield made
    for store in made.opened:
        store.close()


def exact_top_k(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :k]]


def test_add_search_remove_ids_len(backend: Backend) -> None:
    store, vectors, ids = backend.new(), clustered(200, 1), chunk_ids(200)
    assert len(store) == 0 and store.ids().size == 0
    store.add(ids, vectors)
    assert len(store) == 200 and sorted(store.ids().tolist()) == ids.tolist() and store.dim == DIM
    scores, found = store.search(vectors[:5], 1)
    assert found[:, 0].tolist() == ids[:5].tolist()  # each vector finds itself, under its own id
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)  # inner product of unit vectors = cosine
    assert store.remove(np.concatenate([ids[:50], [123456789]])) == 50  # an unknown id is not counted
    assert len(store) == 150 and set(store.ids().tolist()) == set(ids[50:].tolist())
    with pytest.raises(ValueError, match=r"does not match \(2, 32\)"):
        store.add(ids[:2], vectors[:2, :16])


def test_top_k_order_equals_exact_numpy_search(backend: Backend) -> None:
    store, base, ids, queries = backend.new(), clustered(500, 1), chunk_ids(500), clustered(20, 2)
    store.add(ids, base)
    scores, found = store.search(queries, 10)
    truth = exact_top_k(base, ids, queries, 10)
    assert found.shape == (20, 10) and np.array_equal(found, truth)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    assert np.allclose(scores, np.take_along_axis(queries @ base.T, np.argsort(-(queries @ base.T), axis=1)[:, :10],
                                                  axis=1), atol=1e-5)


def test_removed_ids_are_never_returned(backend: Backend) -> None:
    store, base, ids = backend.new(), clustered(300, 3), chunk_ids(300)
    store.add(ids, base)
    gone = ids[::3]
    store.remove(gone)
    _, found = store.search(base[::3], 20)  # the removed vectors themselves as queries: their nearest were them
    assert not set(found.ravel().tolist()) & set(gone.tolist())


def test_reopen_keeps_everything(backend: Backend) -> None:
    store, base, ids = backend.new(), clustered(120, 4), chunk_ids(120)
    store.add(ids, base)
    store.remove(ids[:20])
    again = backend.reopen(store)
    assert len(again) == 100 and set(again.ids().tolist()) == set(ids[20:].tolist())
    assert again.search(base[50:53], 1)[1][:, 0].tolist() == ids[50:53].tolist()


# ---- Milvus only: settings -----------------------------------------------------------------------------------
def test_uri_and_collection_rules(tmp_path: Path) -> None:
    index_dir = tmp_path / "知识 库"
    assert milvus.resolve_uri(StoreConfig(uri="m.db"), index_dir) == str((index_dir / "m.db").resolve())
    assert milvus.resolve_uri(StoreConfig(uri="http://milvus:19530"), index_dir) == "http://milvus:19530"
    assert milvus.resolve_uri(StoreConfig(uri=""), index_dir).endswith("milvus.db")
    with pytest.raises(ConfigError, match=r"^store.uri='vectors' is neither a Milvus server .* must end in .db"):
        milvus.resolve_uri(StoreConfig(uri="vectors"), index_dir)
    name = milvus.collection_name(StoreConfig(), index_dir)
    assert name.startswith("kbqa_") and name.isascii() and name.replace("_", "").isalnum()
    assert name != milvus.collection_name(StoreConfig(), tmp_path / "知识 仓")  # sanitised names stay distinct
    assert milvus.collection_name(StoreConfig(), tmp_path / "default") == "kbqa_default"
    with pytest.raises(ConfigError, match=r"^store.collection='9-bad' is not a legal Milvus name"):
        milvus.collection_name(StoreConfig(collection="9-bad"), index_dir)
    with pytest.raises(ConfigError, match=r"^store.kind='chroma' is not one of faiss, milvus$"):
        milvus_sync.effective_config(StoreConfig(kind="chroma"), index_dir)
    with pytest.raises(ConfigError, match=r"^store.milvus_index='DISKANN' is not one of HNSW, IVF_FLAT, FLAT$"):
        MilvusStore.connect(milvus_cfg(tmp_path, milvus_index="DISKANN"), tmp_path, DIM, create=True)


@pytest.mark.parametrize("index_type", ["HNSW", "IVF_FLAT"])
def test_approximate_milvus_indexes_find_the_exact_neighbours(tmp_path: Path, index_type: str) -> None:
    cfg = milvus_cfg(tmp_path, milvus_index=index_type, ivf_nlist=8, ivf_nprobe=8)
    store = MilvusStore.connect(cfg, tmp_path, DIM, create=True)
    try:
        base, ids, queries = clustered(1000, 1), chunk_ids(1000), clustered(30, 2)
        store.add(ids, base)
        store.save()
        found = store.search(queries, 10)[1]
        truth = exact_top_k(base, ids, queries, 10)
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        assert store.index_type == index_type and recall >= 0.9
    finally:
        store.close()


# ---- Milvus only: the index life-cycle -------------------------------------------------------------------------
@pytest.fixture
def mcfg(cfg: RagConfig, tmp_path: Path) -> RagConfig:
    """The test config with the vectors in a milvus-lite file inside the index folder (exact FLAT search)."""
    return replace(cfg, store=replace(cfg.store, kind="milvus", uri="milvus.db", milvus_index="FLAT"))


def sources_of(index: KnowledgeIndex, query: str, k: int = 20) -> set[str]:
    found = index.search_dense(query, k)
    return {c.source for c in index.chunks([i for i, _ in found]).values()}


def collection_ids(directory: Path, cfg: RagConfig) -> set[int]:
    store = MilvusStore.connect(milvus_sync.effective_config(cfg.store, directory), directory, HashEmbedder().dim,
                                create=False)
    try:
        return set(store.ids().tolist())
    finally:
        store.close()


def docstore_vector_ids(directory: Path) -> set[int]:
    ds = DocStore(directory / DOCSTORE, readonly=True)
    try:
        return ds.vector_id_set()
    finally:
        ds.close()


def test_sync_edit_delete_on_milvus(corpus: Path, mcfg: RagConfig) -> None:
    directory = Path(mcfg.index.dir)
    sync_folder(corpus, mcfg, HashEmbedder())
    assert not list(directory.glob("faiss-*.index")) and (directory / "milvus.db").is_dir()
    assert json.loads((directory / BINDING_FILE).read_text(encoding="utf-8"))["uri"] == "milvus.db"
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["store"]["kind"] == "milvus" and manifest["store"]["collection"] == "kbqa_index"
    index = KnowledgeIndex.open(directory, mcfg, HashEmbedder())
    try:
        assert isinstance(index.store, MilvusStore)
        assert "hr/年假.md" in sources_of(index, "年假 天数")
        (corpus / "运维/打印机.txt").write_text("打印机卡纸时，先关闭电源，再打开后盖取出纸张。", encoding="utf-8")
        (corpus / "hr/年假.md").unlink()
        report = sync_folder(corpus, mcfg, HashEmbedder())
        assert {f.source: f.status for f in report.files}["hr/年假.md"] == "deleted"
        assert "hr/年假.md" not in sources_of(index, "年假 天数 带薪年假 工作满一年")  # the open reader sees it at once
        texts = [c.text for c in index.chunks([i for i, _ in index.search_dense("打印机 卡纸", 10)]).values()]
        assert any("卡纸" in t for t in texts) and not any("10.0.0.25" in t for t in texts)
        assert collection_ids(directory, mcfg) == docstore_vector_ids(directory)
        assert check_integrity(directory) == []
    finally:
        index.close()


def test_default_config_reader_follows_store_json(corpus: Path, cfg: RagConfig, mcfg: RagConfig) -> None:
    sync_folder(corpus, mcfg, HashEmbedder())
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())  # store.kind: faiss (the default config)
    try:
        assert isinstance(index.store, MilvusStore) and "en/vpn.md" in sources_of(index, "VPN gateway port")
    finally:
        index.close()


def test_crash_between_docstore_commit_and_collection_update_is_reconciled(
        corpus: Path, mcfg: RagConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = Path(mcfg.index.dir)
    sync_folder(corpus, mcfg, HashEmbedder())
    before = collection_ids(directory, mcfg)
    (corpus / "hr/年假.md").unlink()
    (corpus / "新.md").write_text("# 报销\n\n差旅报销需在出差结束后十五天内提交发票。", encoding="utf-8")

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("killed after the docstore commit")

    monkeypatch.setattr(milvus_sync, "sync_collection", crash)
    monkeypatch.setattr("rag.index.external.sync_collection", crash)
    with pytest.raises(KeyboardInterrupt):
        sync_folder(corpus, mcfg, HashEmbedder())
    monkeypatch.undo()
    assert collection_ids(directory, mcfg) == before != docstore_vector_ids(directory)  # the collection is stale
    assert any("reflects generation" in p for p in check_integrity(directory))
    index = KnowledgeIndex.open(directory, mcfg, HashEmbedder())  # even now, no answer from the deleted file
    try:
        assert "hr/年假.md" not in sources_of(index, "年假 天数 带薪年假")
    finally:
        index.close()
    report = sync_folder(corpus, mcfg, HashEmbedder())  # nothing changed on disk: the sync only reconciles
    assert {f.status for f in report.files} == {"unchanged"}
    assert collection_ids(directory, mcfg) == docstore_vector_ids(directory)
    assert check_integrity(directory) == []


def test_collection_edited_behind_the_index_back_is_reconciled(corpus: Path, mcfg: RagConfig) -> None:
    """Another writer (or a restore) changed the rows while the recorded generation still matches: the count check
    after each sync catches it (check_integrity diffs every id)."""
    directory = Path(mcfg.index.dir)
    sync_folder(corpus, mcfg, HashEmbedder())
    store = MilvusStore.connect(milvus_sync.effective_config(mcfg.store, directory), directory, HashEmbedder().dim,
                                create=False)
    try:
        some = sorted(store.ids().tolist())[:2]
        store.remove(np.asarray(some))
        store.add(np.asarray([42]), np.full((1, HashEmbedder().dim), 1 / 16.0, dtype=np.float32))
    finally:
        store.close()
    assert set(check_integrity(directory)) and 42 in collection_ids(directory, mcfg)
    index = KnowledgeIndex.open(directory, mcfg, HashEmbedder())
    try:
        query = HashEmbedder().embed_query("任何问题")[None, :]
        assert index.store is not None and 42 in index.store.search(query, 50)[1]  # the collection answers it ...
        assert all(i != 42 for i, _ in index.search_dense("任何问题", 50))  # ... the index drops ids the docstore lacks
    finally:
        index.close()
    (corpus / "en/vpn.md").write_text("# VPN\n\nThe gateway moved to port 443.", encoding="utf-8")
    sync_folder(corpus, mcfg, HashEmbedder())  # the count check catches it and reconciles
    assert collection_ids(directory, mcfg) == docstore_vector_ids(directory) and check_integrity(directory) == []


def test_rebuild_with_another_embedder_recreates_the_collection(corpus: Path, mcfg: RagConfig) -> None:
    sync_folder(corpus, mcfg, HashEmbedder())
    other = HashEmbedder(dim=64)
    sync_folder(corpus, mcfg, other, rebuild=True)
    index = KnowledgeIndex.open(mcfg.index.dir, mcfg, other)
    try:
        assert index.store is not None and index.store.dim == 64 and "en/vpn.md" in sources_of(index, "VPN gateway")
    finally:
        index.close()
    assert check_integrity(mcfg.index.dir) == []


def test_two_readers_in_one_process_share_the_lite_file(corpus: Path, mcfg: RagConfig) -> None:
    sync_folder(corpus, mcfg, HashEmbedder())
    first = KnowledgeIndex.open(mcfg.index.dir, mcfg, HashEmbedder())
    second = KnowledgeIndex.open(mcfg.index.dir, mcfg, HashEmbedder())
    try:
        assert first.search_dense("VPN gateway port", 5) == second.search_dense("VPN gateway port", 5)
        first.close()  # one reader closing must not cut the other off
        assert second.search_dense("VPN gateway port", 5)
    finally:
        second.close()


HOLDER = textwrap.dedent("""
    import sys
    from pymilvus import MilvusClient
    client = MilvusClient(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.read()
""")


def test_a_second_process_gets_a_clear_error_for_a_lite_file(corpus: Path, mcfg: RagConfig) -> None:
    """milvus-lite flocks its folder: one process at a time. What is true is tested (docs/SCALING.md says so)."""
    sync_folder(corpus, mcfg, HashEmbedder())
    lite = str(Path(mcfg.index.dir).resolve() / "milvus.db")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lite], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(IndexStateError, match=r"milvus-lite lets one process at a time open it: stop the other "
                                                  r"process \(app or ingest\), or serve the index from a Milvus server"):
            KnowledgeIndex.open(mcfg.index.dir, mcfg, HashEmbedder())
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    index = KnowledgeIndex.open(mcfg.index.dir, mcfg, HashEmbedder())  # free again once the holder exits
    index.close()


def test_missing_collection_names_the_fix(corpus: Path, cfg: RagConfig, mcfg: RagConfig) -> None:
    sync_folder(corpus, cfg, HashEmbedder())  # a FAISS index ...
    with pytest.raises(IndexStateError, match=r"no Milvus collection 'kbqa_index' at .*milvus.db; fill it with: "
                                              r"python -m rag.migrate --from faiss:"):
        KnowledgeIndex.open(cfg.index.dir, mcfg, HashEmbedder())  # ... opened as if it were served from Milvus
