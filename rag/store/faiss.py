"""FAISS vector store: exact inner product for small corpora, an approximate index for large ones.

Kinds (``store.faiss_index``):
    flat       exact inner product (IndexFlatIP in IndexIDMap2): add and remove in place
    hnsw       IndexHNSWFlat in IndexIDMap2: add in place, no remove (rebuilt instead)
    hnsw_sq8   IndexHNSWSQ (8-bit scalar quantiser, 1 byte per dimension) in IndexIDMap2: as hnsw
    ivf        IndexIVFFlat holding the chunk ids itself: add and remove in place
    ivf_sq8    IndexIVFScalarQuantizer (8-bit): as ivf, a quarter of the memory
    auto       flat below ``store.auto_threshold`` vectors, ``store.auto_large`` at or above it (picked per build)

Why ``auto_large: ivf_sq8`` (docs/BENCHMARKS.md, "Retrieval"): on 1M clustered 768-d vectors on a 2-core CPU it is
the only kind measured under 5 ms p50 with recall@10 >= 0.95 and under 3.5 KB per chunk (FAISS file + the float16
copy in SQLite): p50 0.9 ms, recall@10 0.987, 2.8 KB, built in 40 s. HNSW built in 2.5-4.5 min reached recall
0.76-0.88 there, and float32 kinds need 5.1+ KB per chunk.

Saving writes a temp file next to the target and ``os.replace``s it, so a crash never leaves a half-written index
under the real name. A file's kind is read back from the file itself, so an index written with another setting
(or before ``auto`` existed) still opens.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from rag.core.config import StoreConfig
from rag.core.errors import ConfigError

log = logging.getLogger(__name__)

FIXED_KINDS = ("flat", "hnsw", "hnsw_sq8", "ivf", "ivf_sq8")
KINDS = (*FIXED_KINDS, "auto")


def _faiss() -> Any:
    import faiss

    return faiss


def resolve_kind(cfg: StoreConfig, n_vectors: int) -> str:
    """The concrete index kind for a corpus of ``n_vectors`` (``auto`` -> flat below the threshold)."""
    if cfg.faiss_index not in KINDS:
        raise ConfigError(f"store.faiss_index={cfg.faiss_index!r} is not one of {', '.join(KINDS)}")
    if cfg.faiss_index != "auto":
        return cfg.faiss_index
    if cfg.auto_large not in FIXED_KINDS:
        raise ConfigError(f"store.auto_large={cfg.auto_large!r} is not one of {', '.join(FIXED_KINDS)}")
    return "flat" if n_vectors < cfg.auto_threshold else cfg.auto_large


def ivf_nlist(cfg: StoreConfig, n_train: int) -> int:
    """Number of IVF lists: ``store.ivf_nlist`` (0 = about 1 per 1,000 vectors), capped at n/39 (FAISS wants ~39
    training points per list)."""
    wanted = cfg.ivf_nlist if cfg.ivf_nlist > 0 else max(1, n_train // 1000)
    return max(1, min(wanted, n_train // 39))


def kind_of(index: Any) -> str:
    """The kind of a FAISS index object (as read from a file)."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSWSQ):
        return "hnsw_sq8"
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVFScalarQuantizer):
        return "ivf_sq8"
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "flat"


class FaissStore:
    """A FAISS index over int64 ids. ``supports_remove`` is False for HNSW (the index is rebuilt instead)."""

    def __init__(self, dim: int, cfg: StoreConfig, index: Any | None = None, kind: str | None = None) -> None:
        resolve_kind(cfg, 0)  # validates the setting
        self.dim = dim
        self.cfg = cfg
        if index is None:  # an untrained IVF cannot be empty-built: it starts flat and build() trains the real one
            self.index = self._new_index(kind or resolve_kind(cfg, 0), n_train=0)
        else:
            self.index = index
        self.kind = kind_of(self.index)
        self.apply_search_params()
        faiss = _faiss()
        # IVF files written before this module held their ids in an IndexIDMap2, whose remove_ids renumbers as if
        # the inner index were flat: wrong for IVF, so those are rebuilt rather than edited.
        self.supports_remove = self.kind == "flat" or (self.kind.startswith("ivf")
                                                       and not isinstance(self.index, faiss.IndexIDMap))

    def _new_index(self, kind: str, n_train: int) -> Any:
        faiss = _faiss()
        ip = faiss.METRIC_INNER_PRODUCT
        if kind in ("ivf", "ivf_sq8") and n_train > 0:
            nlist = ivf_nlist(self.cfg, n_train)
            quantizer = faiss.IndexFlatIP(self.dim)
            if kind == "ivf":
                ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, ip)
            else:
                ivf = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, ip)
            ivf.own_fields = True
            quantizer.this.disown()  # the IVF index frees its quantizer
            ivf.nprobe = min(self.cfg.ivf_nprobe, nlist)
            return ivf  # IVF stores the chunk ids itself, so add_with_ids / remove_ids work without an id map
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.cfg.hnsw_m, ip)
        elif kind == "hnsw_sq8":
            inner = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_8bit, self.cfg.hnsw_m, ip)
        else:  # flat, or an IVF with nothing to train on yet (rebuilt with training data by build())
            inner = faiss.IndexFlatIP(self.dim)
        if kind.startswith("hnsw"):
            inner.hnsw.efSearch = self.cfg.hnsw_ef_search
            inner.hnsw.efConstruction = self.cfg.hnsw_ef_construction
        return faiss.IndexIDMap2(inner)

    def apply_search_params(self, cfg: StoreConfig | None = None) -> None:
        """Set efSearch / nprobe from ``cfg`` (default the store's own); they are not part of a file's meaning."""
        if cfg is not None:
            self.cfg = cfg
        faiss = _faiss()
        inner = faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap) else self.index
        if self.kind.startswith("hnsw"):
            inner.hnsw.efSearch = self.cfg.hnsw_ef_search
        elif self.kind.startswith("ivf"):
            ivf = faiss.extract_index_ivf(inner)
            ivf.nprobe = min(self.cfg.ivf_nprobe, ivf.nlist)

    @staticmethod
    def kind_for(cfg: StoreConfig, n_vectors: int) -> str:
        """The kind :meth:`build` makes for ``n_vectors`` (see :func:`resolve_kind`)."""
        return resolve_kind(cfg, n_vectors)

    @classmethod
    def build(cls, dim: int, cfg: StoreConfig, ids: np.ndarray, vectors: np.ndarray) -> FaissStore:
        """A fresh store holding ``vectors`` [n, dim] under ``ids`` [n]; the kind follows ``resolve_kind(cfg, n)``."""
        store = cls.trained(dim, cfg, vectors)
        store.add(ids, vectors)
        return store

    @classmethod
    def trained(cls, dim: int, cfg: StoreConfig, vectors: np.ndarray) -> FaissStore:
        """An empty store of the kind for ``len(vectors)``, trained on them if the kind needs training.

        IVF k-means and the SQ8 ranges learn from a sample: 64 vectors per list (FAISS wants >= 39), at least 50k.
        """
        kind = resolve_kind(cfg, len(vectors))
        store = cls(dim, cfg, index=None, kind=kind)
        if kind == "flat" or len(vectors) == 0:
            return store
        store.index = store._new_index(kind, n_train=len(vectors))
        store.kind = kind
        store.supports_remove = kind.startswith("ivf")
        store.apply_search_params()
        if not store.index.is_trained:
            limit = max(50_000, 64 * (ivf_nlist(cfg, len(vectors)) if kind.startswith("ivf") else 1))
            sample = vectors
            if len(vectors) > limit:  # k-means time grows with the sample, recall hardly does
                sample = vectors[np.sort(np.random.default_rng(0).choice(len(vectors), limit, replace=False))]
            store.index.train(np.ascontiguousarray(sample, dtype=np.float32))
        return store

    @classmethod
    def load(cls, path: Path, dim: int, cfg: StoreConfig) -> FaissStore:
        index = _faiss().read_index(str(path))
        if index.d != dim:
            raise ValueError(f"FAISS file {path} has dim {index.d}, expected {dim}")
        return cls(dim, cfg, index=index)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors shape {vectors.shape} does not match ({len(ids)}, {self.dim})")
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        if not self.supports_remove:
            raise NotImplementedError(f"a {self.kind} FAISS index cannot remove vectors in place; rebuild the store")
        return int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, len(self))) if len(self) else 1
        if len(self) == 0:
            n = queries.shape[0]
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        scores, ids = self.index.search(queries, k)
        return scores, ids

    def ids(self) -> np.ndarray:
        faiss = _faiss()
        if isinstance(self.index, faiss.IndexIDMap):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = faiss.extract_index_ivf(self.index).invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                 for i in range(lists.nlist) if lists.list_size(i)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def close(self) -> None:
        """Nothing to release: the index is an in-memory object (the protocol's hook for server-backed stores)."""

    def save(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        _faiss().write_index(self.index, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
