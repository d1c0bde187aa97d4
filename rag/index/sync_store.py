"""The vector store of a committed sync: write ``faiss-<G>.index`` for the new generation, or hand the diff to Milvus.

:func:`rag.index.sync.sync_folder` first commits every change to SQLite (the source of truth), then calls
:func:`write_store` with what it removed and added. Kept apart from the folder sync because it is a different
concern: the sync decides *what* changed, this decides how the ANN index catches up (edit the previous file in place,
or rebuild from SQLite when the kind must change or removal is unsupported). A crash here loses nothing: a missing or
stale FAISS file is rebuilt from SQLite on open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rag.core.config import RagConfig
from rag.index.docstore import DocStore
from rag.index.external import sync_external
from rag.index.layout import faiss_path
from rag.index.milvus_sync import effective_config
from rag.store.faiss import FaissStore


def write_store(ds: DocStore, cfg: RagConfig, directory: Path, dim: int, removed_ids: list[int], added_ids: list[int],
                added_vectors: list[np.ndarray], start_generation: int, rebuild: bool) -> None:
    """Write faiss-<G>.index for the committed generation G, incrementally when possible; drop older files.

    Incremental = the previous generation's file, edited in place, when its kind is still the one ``store`` settings
    pick for the new size (``auto`` switches flat -> approximate at ``store.auto_threshold``) and it can remove what
    must go; otherwise the store is rebuilt from the vectors in SQLite. Added vectors are rounded to the docstore's
    vector dtype first, so both ways give the same index.
    """
    store_cfg = effective_config(cfg.store, directory)
    if store_cfg.kind != "faiss":  # Milvus: the collection takes the diff; FAISS files of earlier runs go
        sync_external(ds, store_cfg, directory, dim, removed_ids, added_ids, added_vectors,
                      start_generation, rebuild)
        for stale in directory.glob("faiss-*.index*"):
            stale.unlink(missing_ok=True)
        return
    generation = ds.generation
    target = faiss_path(directory, generation)
    if not target.is_file():
        old_file = faiss_path(directory, start_generation)
        store: FaissStore | None = None
        if not rebuild and old_file.is_file():
            try:
                store = FaissStore.load(old_file, dim, cfg.store)
                count = ds.count_vectors()
                if store.kind != FaissStore.kind_for(cfg.store, count) or (removed_ids and not store.supports_remove):
                    store = None
                else:
                    store.remove(np.asarray(removed_ids, dtype=np.int64))
                    if added_vectors:
                        store.add(np.asarray(added_ids, dtype=np.int64),
                                  ds.round_vectors(np.concatenate(added_vectors)))
                    if len(store) != count:
                        store = None
            except (RuntimeError, ValueError):
                store = None
        if store is None:  # rebuilt from SQLite (what a reader would do without the file)
            store = FaissStore.build(dim, cfg.store, *ds.all_vectors(dim))
        store.save(target)
    for stale in directory.glob("faiss-*.index*"):
        if stale.name != target.name:
            stale.unlink(missing_ok=True)
