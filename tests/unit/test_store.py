"""FaissStore kinds and ``auto`` selection, float16 vectors in SQLite, and indexes written by older code."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest

from rag.core.config import RagConfig, StoreConfig
from rag.core.errors import ConfigError
from rag.embed.embedder import HashEmbedder
from rag.index.docstore import DocStore
from rag.index.integrity import check_integrity
from rag.index.layout import DOCSTORE, MANIFEST, faiss_path
from rag.index.reader import KnowledgeIndex, load_store
from rag.index.sync import sync_folder
from rag.store.faiss import FaissStore

DIM = 32


def clustered(n: int, seed: int, clusters: int = 8, dim: int = DIM) -> np.ndarray:
    """[n, dim] unit vectors around ``clusters`` centroids shared by every seed (base set and queries match)."""
    centroids = np.random.default_rng(0).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    points = centroids[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def ids_for(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 13 + 5  # sparse, like chunk ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def test_auto_picks_flat_below_the_threshold_and_the_approximate_kind_above() -> None:
    cfg = StoreConfig(faiss_index="auto", auto_threshold=500)
    assert cfg.auto_large == "ivf_sq8" and StoreConfig().faiss_index == "auto"
    small = FaissStore.build(DIM, cfg, ids_for(499), clustered(499, 1))
    large = FaissStore.build(DIM, cfg, ids_for(2000), clustered(2000, 1))
    assert small.kind == "flat" and isinstance(faiss.downcast_index(small.index.index), faiss.IndexFlatIP)
    assert large.kind == "ivf_sq8" and isinstance(large.index, faiss.IndexIVFScalarQuantizer)
    hnsw = FaissStore.build(DIM, replace(cfg, auto_large="hnsw_sq8"), ids_for(2000), clustered(2000, 1))
    assert hnsw.kind == "hnsw_sq8" and not hnsw.supports_remove
    assert FaissStore.kind_for(cfg, 0) == "flat"


def test_bad_kinds_are_config_errors_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"^store.faiss_index='annoy' is not one of flat, hnsw, hnsw_sq8, ivf, "
                                          r"ivf_sq8, auto$"):
        FaissStore(DIM, StoreConfig(faiss_index="annoy"))
    with pytest.raises(ConfigError, match=r"^store.auto_large='auto' is not one of flat, hnsw, hnsw_sq8, ivf, ivf_sq8$"):
        FaissStore.kind_for(StoreConfig(auto_large="auto"), 10**9)


@pytest.mark.parametrize("kind", ["ivf_sq8", "ivf", "hnsw_sq8", "hnsw"])
def test_approximate_kinds_recall_at_10_on_clustered_vectors(kind: str, tmp_path: Path) -> None:
    base, queries, ids = clustered(4000, 1), clustered(100, 2), ids_for(4000)
    cfg = StoreConfig(faiss_index=kind, ivf_nprobe=4, hnsw_ef_search=64)
    _, truth = FaissStore.build(DIM, StoreConfig(faiss_index="flat"), ids, base).search(queries, 10)
    store = FaissStore.build(DIM, cfg, ids, base)
    store.save(tmp_path / "a.index")
    loaded = FaissStore.load(tmp_path / "a.index", DIM, cfg)  # the kind comes back from the file
    assert loaded.kind == kind and len(loaded) == 4000
    assert recall(loaded.search(queries, 10)[1], truth) >= 0.9
    assert sorted(loaded.ids().tolist()) == ids.tolist()


def test_ivf_adds_and_removes_in_place_under_chunk_ids() -> None:
    base, ids = clustered(3000, 1), ids_for(3000)
    store = FaissStore.build(DIM, StoreConfig(faiss_index="ivf_sq8"), ids[:2000], base[:2000])
    assert store.supports_remove
    store.add(ids[2000:], base[2000:])
    assert store.remove(ids[:100]) == 100 and len(store) == 2900
    _, found = store.search(base[2500:2510], 1)
    assert found[:, 0].tolist() == ids[2500:2510].tolist()  # each vector finds itself under its own id
    assert set(store.ids().tolist()) == set(ids[100:].tolist())


def test_hnsw_refuses_remove_with_the_fix() -> None:
    store = FaissStore.build(DIM, StoreConfig(faiss_index="hnsw"), ids_for(50), clustered(50, 1))
    with pytest.raises(NotImplementedError, match="^a hnsw FAISS index cannot remove vectors in place; rebuild"):
        store.remove(ids_for(1))


def test_float16_vectors_round_trip_and_rebuild_matches(tmp_path: Path) -> None:
    vectors, ids = clustered(300, 3), ids_for(300)
    ds = DocStore(tmp_path / "d.sqlite")  # default: float16
    with ds.transaction():
        ds.put_vectors(ids.tolist(), vectors)
    assert ds.vector_dtype == "float16" and ds.get_meta("vector_dtype") == "float16"
    assert len(ds.conn.execute("SELECT v FROM vectors LIMIT 1").fetchone()[0]) == DIM * 2
    got_ids, got = ds.all_vectors(DIM)
    assert got.dtype == np.float32 and got_ids.tolist() == ids.tolist()
    assert np.abs(got - vectors).max() < 1e-3
    assert np.array_equal(got, ds.round_vectors(vectors))  # what writers give FAISS equals what a rebuild reads
    queries = clustered(20, 4)
    cfg = StoreConfig(faiss_index="flat")
    exact_scores, exact_ids = FaissStore.build(DIM, cfg, ids, vectors).search(queries, 5)
    rebuilt_scores, rebuilt_ids = FaissStore.build(DIM, cfg, got_ids, got).search(queries, 5)
    assert np.abs(rebuilt_scores - exact_scores).max() < 1e-3
    assert (rebuilt_ids == exact_ids).mean() >= 0.95  # only near-ties may swap


def test_float32_docstore_written_before_the_dtype_key_still_reads(tmp_path: Path) -> None:
    vectors, ids = clustered(10, 5), ids_for(10)
    ds = DocStore(tmp_path / "old.sqlite")
    ds.conn.executemany("INSERT INTO vectors(id, v) VALUES (?, ?)",  # the old format: float32 bytes, no meta key
                        [(int(i), v.tobytes()) for i, v in zip(ids, vectors, strict=True)])
    assert ds.get_meta("vector_dtype") is None and ds.vector_dtype == "float32"
    assert np.array_equal(ds.all_vectors(DIM)[1], vectors)
    ds.put_vectors([999], vectors[:1])  # new writes into an old index stay float32
    assert ds.get_meta("vector_dtype") == "float32"
    assert len(ds.conn.execute("SELECT v FROM vectors WHERE id=999").fetchone()[0]) == DIM * 4
    with pytest.raises(ConfigError, match=r"^store.vector_dtype='int8' is not one of float16, float32$"):
        DocStore(tmp_path / "x.sqlite", vector_dtype="int8")


def test_index_built_before_the_change_still_opens(corpus: Path, cfg: RagConfig) -> None:
    """An index folder as the old code left it: float32 vectors without a dtype key, flat FAISS in IndexIDMap2."""
    sync_folder(corpus, cfg, HashEmbedder())
    directory = Path(cfg.index.dir)
    ds = DocStore(directory / DOCSTORE)
    ids, vectors = ds.all_vectors(HashEmbedder().dim)
    with ds.transaction():
        ds.conn.execute("DELETE FROM meta WHERE key='vector_dtype'")
        ds.conn.executemany("UPDATE vectors SET v=? WHERE id=?",
                            [(v.astype(np.float32).tobytes(), int(i)) for i, v in zip(ids, vectors, strict=True)])
        generation = ds.generation
    ds.close()
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    old.add_with_ids(vectors, ids)
    faiss.write_index(old, str(faiss_path(directory, generation)))
    index = KnowledgeIndex.open(directory, cfg, HashEmbedder())
    assert index.store is not None and index.store.kind == "flat" and len(index.store) == len(ids)
    assert index.search_dense("磁盘满了怎么查看分区使用率", 1)
    assert index.docstore.vector_dtype == "float32"
    assert check_integrity(directory) == []


def test_old_ivf_file_in_an_id_map_opens_but_is_rebuilt_rather_than_edited(tmp_path: Path) -> None:
    vectors, ids = clustered(2000, 1), ids_for(2000)
    quantizer = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFFlat(quantizer, DIM, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    old = faiss.IndexIDMap2(ivf)  # what the code before this change wrote for faiss_index: ivf
    old.add_with_ids(vectors, ids)
    faiss.write_index(old, str(tmp_path / "old.index"))
    store = FaissStore.load(tmp_path / "old.index", DIM, StoreConfig(faiss_index="ivf", ivf_nprobe=8))
    assert store.kind == "ivf" and not store.supports_remove
    assert store.search(vectors[:3], 1)[1][:, 0].tolist() == ids[:3].tolist()


def test_sync_switches_to_the_approximate_kind_at_the_threshold(corpus: Path, cfg: RagConfig) -> None:
    small = replace(cfg, store=replace(cfg.store, faiss_index="auto", auto_threshold=10**6))
    first = sync_folder(corpus, small, HashEmbedder())
    directory = Path(cfg.index.dir)
    assert FaissStore.load(faiss_path(directory, first.generation), HashEmbedder().dim, small.store).kind == "flat"
    (corpus / "new.md").write_text("# 新文件\n\n" + "更多内容。" * 200, encoding="utf-8")
    tiny = replace(cfg, store=replace(cfg.store, faiss_index="auto", auto_threshold=2, ivf_nprobe=64))
    second = sync_folder(corpus, tiny, HashEmbedder())
    store = FaissStore.load(faiss_path(directory, second.generation), HashEmbedder().dim, tiny.store)
    ds = DocStore(directory / DOCSTORE, readonly=True)
    try:
        assert store.kind == "ivf_sq8" and len(store) == ds.count_vectors()
        rebuilt = load_store(ds, tmp_dir_without_file(directory), tiny, HashEmbedder().dim)
        assert sorted(rebuilt.ids().tolist()) == sorted(store.ids().tolist())
    finally:
        ds.close()
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["store"]["faiss_kind"] == "ivf_sq8" and manifest["store"]["vector_dtype"] == "float16"
    assert check_integrity(directory) == []


def tmp_dir_without_file(directory: Path) -> Path:
    """A folder with no FAISS file, so load_store rebuilds from SQLite."""
    empty = directory.parent / "no-faiss-here"
    empty.mkdir(exist_ok=True)
    return empty


def test_incremental_flat_update_equals_a_rebuild_from_sqlite(corpus: Path, cfg: RagConfig) -> None:
    sync_folder(corpus, cfg, HashEmbedder())
    (corpus / "运维/打印机.txt").write_text("打印机卡纸时，先关闭电源，再打开后盖取出纸张。", encoding="utf-8")
    report = sync_folder(corpus, cfg, HashEmbedder())
    directory = Path(cfg.index.dir)
    dim = HashEmbedder().dim
    incremental = FaissStore.load(faiss_path(directory, report.generation), dim, cfg.store)
    ds = DocStore(directory / DOCSTORE, readonly=True)
    try:
        rebuilt = load_store(ds, tmp_dir_without_file(directory), cfg, dim)
        _, vectors = ds.all_vectors(dim)
    finally:
        ds.close()
    a_scores, a_ids = incremental.search(vectors[:5], 5)
    b_scores, b_ids = rebuilt.search(vectors[:5], 5)
    assert np.array_equal(a_ids, b_ids) and np.allclose(a_scores, b_scores, atol=1e-6)
