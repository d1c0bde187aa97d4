"""FAISS vector store: exact inner product by default, HNSW or IVF for large corpora.

The index is wrapped in ``IndexIDMap2`` so vectors live under the docstore's int64 chunk ids. Saving writes a temp
file next to the target and ``os.replace``s it, so a crash never leaves a half-written index under the real name.
On a machine with GPUs (``faiss-gpu``) a flat index is moved to GPU 0 for search.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from rag.config import StoreConfig
from rag.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivf")


def _faiss() -> Any:
    import faiss

    return faiss


class FaissStore:
    """A FAISS index over int64 ids. ``supports_remove`` is False for HNSW (the index rebuilds it instead)."""

    def __init__(self, dim: int, cfg: StoreConfig, index: Any | None = None) -> None:
        if cfg.faiss_index not in KINDS:
            raise ConfigError(f"store.faiss_index={cfg.faiss_index!r} is not one of {', '.join(KINDS)}")
        self.dim = dim
        self.cfg = cfg
        self.index = index if index is not None else self._new_index(n_train=0)
        self.supports_remove = cfg.faiss_index != "hnsw"

    def _new_index(self, n_train: int) -> Any:
        faiss = _faiss()
        kind = self.cfg.faiss_index
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = self.cfg.hnsw_ef_search
        elif kind == "ivf" and n_train > 0:
            nlist = max(1, min(self.cfg.ivf_nlist, n_train // 39))  # FAISS wants ~39 training points per list
            quantizer = faiss.IndexFlatIP(self.dim)
            inner = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            inner.nprobe = min(self.cfg.ivf_nprobe, nlist)
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    @classmethod
    def build(cls, dim: int, cfg: StoreConfig, ids: np.ndarray, vectors: np.ndarray) -> FaissStore:
        """A fresh store holding ``vectors`` [n, dim] under ``ids`` [n] (trains IVF on them)."""
        store = cls(dim, cfg, index=None)
        if cfg.faiss_index == "ivf" and len(ids) > 0:
            store.index = store._new_index(n_train=len(ids))
            store.index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        store.add(ids, vectors)
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
            raise NotImplementedError("HNSW cannot remove vectors; rebuild the store")
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
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def save(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        _faiss().write_index(self.index, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
