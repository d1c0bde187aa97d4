"""Vector stores behind one protocol: FAISS (embedded default); Milvus for scale-out.

The index and sync modules ask this package which backend serves a folder (:func:`effective_config`) and, for an
external one (Milvus), delegate to the helpers below; the Milvus code itself (and pymilvus, imported lazily) stays in
:mod:`rag.store.milvus` (the store) and :mod:`rag.index.milvus_sync` (keeping it in line with the docstore).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rag.core.config import StoreConfig
from rag.index.docstore import DocStore
from rag.index.milvus_sync import integrity_problems, known_ids, open_for_reading, sync_collection
from rag.store.base import VectorStore


def open_external(ds: DocStore, directory: Path, cfg: StoreConfig, dim: int) -> VectorStore:
    """The store serving ``directory`` when ``effective_config(...).kind`` is not faiss (Milvus)."""
    return open_for_reading(ds, directory, cfg, dim)


def sync_external(ds: DocStore, cfg: StoreConfig, directory: Path, dim: int, removed_ids: list[int],
                  added_ids: list[int], added_vectors: list[np.ndarray], start_generation: int, rebuild: bool) -> None:
    """Apply one sync's diff (or reconcile) to the external store, then record the docstore generation in it."""
    vectors = np.concatenate(added_vectors) if added_vectors else None
    sync_collection(ds, cfg, directory, dim, removed_ids, added_ids, vectors, start_generation, rebuild)


def external_problems(ds: DocStore, directory: Path, cfg: StoreConfig, dim: int, vector_ids: set[int]) -> list[str]:
    """``check_integrity``'s view of an external store: its ids against the docstore's."""
    return integrity_problems(ds, directory, cfg, dim, vector_ids)


def filter_known(ds: DocStore, hits: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Drop (id, score) pairs whose id the docstore no longer holds (an external store may lag behind it)."""
    keep = known_ids(ds, [i for i, _ in hits])
    return [(i, s) for i, s in hits if i in keep]
