"""Keeping a Milvus collection in line with the index folder's SQLite docstore, and the folder's ``store.json``.

The docstore is the truth and commits first; the collection follows. Each collection records the docstore generation
it reflects (:meth:`MilvusStore.set_state`), so a sync that finds the generation it started from applies just its own
diff, and anything else (a crash between the docstore commit and the collection update, another writer, a new or
re-pointed collection) is reconciled by diffing ids against the docstore. Readers never write: they check the
embedder, warn on a lagging generation, and the index drops hits whose ids the docstore no longer holds.

An index folder holding ``store.json`` (written by a milvus sync or ``python -m rag.migrate``) is served from the
collection it names whatever ``store.kind`` the reader's config says; deleting the file goes back to FAISS (the FAISS
file is rebuilt from SQLite on the next open).

Apart from :mod:`rag.store.milvus` because none of this talks to pymilvus directly: it is the bookkeeping between two
stores, written against :class:`MilvusStore`'s small API.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rag.core.config import StoreConfig
from rag.core.errors import ConfigError, IndexStateError
from rag.index.docstore import DocStore
from rag.store.milvus import BATCH_ROWS, DEFAULT_LITE_FILE, CollectionState, MilvusStore, collection_name

log = logging.getLogger(__name__)

STORE_KINDS = ("faiss", "milvus")
BINDING_FILE = "store.json"  # in the index folder: {"kind": "milvus", "uri", "collection", "milvus_index"}


# ---- which store serves a folder (store.json) --------------------------------------------------------------------
def effective_config(cfg: StoreConfig, directory: Path) -> StoreConfig:
    """The store settings that serve ``directory``: an explicit ``store.kind=milvus`` wins; otherwise the folder's
    ``store.json`` (if any) decides, so readers on the default config follow a migrated index."""
    if cfg.kind not in STORE_KINDS:
        raise ConfigError(f"store.kind={cfg.kind!r} is not one of {', '.join(STORE_KINDS)}")
    if cfg.kind == "milvus":
        return cfg
    binding = read_binding(directory)
    if binding is None:
        return cfg
    return replace(cfg, kind="milvus", uri=binding.get("uri", ""), collection=binding.get("collection", ""),
                   milvus_index=binding.get("milvus_index", cfg.milvus_index))


def read_binding(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / BINDING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IndexStateError(f"{path} is not valid JSON ({exc}); fix it, or delete it to serve the index from "
                              "FAISS") from exc
    return data if isinstance(data, dict) and data.get("kind") == "milvus" else None


def write_binding(directory: Path, cfg: StoreConfig) -> None:
    """Record in the index folder that it is served from this collection (only when that changed)."""
    from rag.core.paths import write_json_atomic  # the index module owns the folder's file conventions

    binding = {"kind": "milvus", "uri": cfg.uri.strip() or DEFAULT_LITE_FILE,
               "collection": collection_name(cfg, directory), "milvus_index": cfg.milvus_index}
    if read_binding(directory) != binding:
        write_json_atomic(Path(directory) / BINDING_FILE, binding)


# ---- keeping the collection in line with the docstore ------------------------------------------------------------
def row_metadata(ds: DocStore, ids: Sequence[int]) -> tuple[list[str], list[str]]:
    """(source, file sha256) of each chunk id, from the docstore; "" for ids it does not know."""
    found: dict[int, tuple[str, str]] = {}
    for start in range(0, len(ids), 500):
        part = [int(i) for i in ids[start:start + 500]]
        marks = ",".join("?" * len(part))
        rows = ds.conn.execute(f"SELECT c.id, c.source, COALESCE(f.sha256, '') FROM chunks c LEFT JOIN files f "
                               f"ON f.source = c.source WHERE c.id IN ({marks})", part)
        found.update((r[0], (r[1], r[2])) for r in rows)
    pairs = [found.get(int(i), ("", "")) for i in ids]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def known_ids(ds: DocStore, ids: Sequence[int]) -> set[int]:
    """The ids among ``ids`` that the docstore holds a vector for (search results outside it are dropped)."""
    if not ids:
        return set()
    marks = ",".join("?" * len(ids))
    return {r[0] for r in ds.conn.execute(f"SELECT id FROM vectors WHERE id IN ({marks})", [int(i) for i in ids])}


def fill(store: MilvusStore, ds: DocStore, ids: np.ndarray, vectors: np.ndarray, progress: Any = None) -> None:
    """Insert ``vectors`` [n, dim] under ``ids`` with their docstore metadata, ``progress(n_done)`` after each batch."""
    for start in range(0, len(ids), BATCH_ROWS):
        part = ids[start:start + BATCH_ROWS]
        sources, shas = row_metadata(ds, part.tolist())
        store.add(part, vectors[start:start + BATCH_ROWS], sources, shas)
        if progress is not None:
            progress(len(part))


def reconcile(store: MilvusStore, ds: DocStore, dim: int) -> tuple[int, int]:
    """Make the collection hold exactly the docstore's vector ids: insert the missing, delete the extra.

    Returns (inserted, deleted)."""
    have = set(store.ids().tolist())
    ids, vectors = ds.all_vectors(dim)
    missing = np.fromiter((i not in have for i in ids.tolist()), dtype=bool, count=len(ids))
    extra = np.asarray(sorted(have - set(ids.tolist())), dtype=np.int64)
    deleted = store.remove(extra)
    fill(store, ds, ids[missing], vectors[missing])
    return int(missing.sum()), deleted


def sync_collection(ds: DocStore, cfg: StoreConfig, directory: Path, dim: int, removed_ids: Sequence[int],
                    added_ids: Sequence[int], added_vectors: np.ndarray | None, start_generation: int,
                    rebuild: bool) -> None:
    """After a docstore commit: bring the collection to the docstore's generation and record it.

    The diff of this run (removed out, added in) is applied when the collection says it reflects the generation this
    run started from; otherwise (a crash between the docstore commit and the collection update, another writer, a
    new or re-pointed collection) the ids are diffed against the docstore instead. The count is checked either way.
    """
    fingerprint = (ds.get_json("embedder") or {}).get("fingerprint", "")
    store = MilvusStore.connect(cfg, directory, dim, create=True, recreate=rebuild)
    try:
        state = store.state()
        _check_owner(store, state, directory)
        if state.embedder not in (None, fingerprint):  # vectors of another model: refill from the docstore
            store.close()
            store = MilvusStore.connect(cfg, directory, dim, create=True, recreate=True)
            state = store.state()
        count = ds.count_vectors()
        if state.generation == start_generation and not rebuild:
            added = np.asarray(added_ids, dtype=np.int64)
            # an id both removed and added (re-split of an unchanged file) must end present: delete all, then insert
            store.remove(np.asarray(sorted(set(removed_ids) | set(added.tolist())), dtype=np.int64))
            if len(added):
                vectors = ds.round_vectors(added_vectors if added_vectors is not None else np.zeros((0, dim)))
                fill(store, ds, added, vectors)
        if state.generation != start_generation or rebuild or len(store) != count:
            inserted, deleted = reconcile(store, ds, dim)
            log.info("reconciled Milvus collection %s with the docstore: %d inserted, %d deleted (it reflected "
                     "generation %s, this run started at %d)", store.collection, inserted, deleted, state.generation,
                     start_generation)
        store.save()
        store.set_state(ds.generation, fingerprint, directory)
        write_binding(directory, cfg)
    finally:
        store.close()


def _check_owner(store: MilvusStore, state: CollectionState, directory: Path) -> None:
    """On a shared server, refuse to edit a collection another index folder fills (same folder name elsewhere)."""
    if store.lite_path is not None or state.index_dir in (None, str(Path(directory).resolve())):
        return
    raise IndexStateError(
        f"Milvus collection {store.collection!r} at {store.uri} belongs to index {state.index_dir}; give this index "
        f"its own with store.collection=NAME")


def open_for_reading(ds: DocStore, directory: Path, cfg: StoreConfig, dim: int) -> MilvusStore:
    """The collection serving ``directory``, checked against the docstore's embedder (readers never write to it)."""
    store = MilvusStore.connect(cfg, directory, dim, create=False)
    state = store.state()
    fingerprint = (ds.get_json("embedder") or {}).get("fingerprint")
    if state.embedder not in (None, fingerprint):
        store.close()
        raise IndexStateError(f"Milvus collection {store.collection!r} at {store.uri} holds vectors of another "
                              f"embedder than index {directory}; re-fill it with: python ingest.py FOLDER --rebuild")
    if state.generation != ds.generation:
        log.warning("Milvus collection %s reflects generation %s, the docstore is at %d (a writer is running or "
                    "crashed); results are checked against the docstore and the next ingest reconciles",
                    store.collection, state.generation, ds.generation)
    return store


def integrity_problems(ds: DocStore, directory: Path, cfg: StoreConfig, dim: int, vector_ids: set[int]) -> list[str]:
    """Differences between the collection and the docstore's vectors (empty = consistent)."""
    try:
        store = MilvusStore.connect(cfg, directory, dim, create=False)
    except IndexStateError as exc:
        return [str(exc)]
    try:
        have = set(store.ids().tolist())
        state = store.state()
    finally:
        store.close()
    problems = []
    if have != vector_ids:
        problems.append(f"Milvus collection {store.collection!r}: {len(vector_ids - have)} docstore vectors missing, "
                        f"{len(have - vector_ids)} extra ids; an ingest reconciles it")
    if state.generation != ds.generation:
        problems.append(f"Milvus collection {store.collection!r} reflects generation {state.generation}, the "
                        f"docstore is at {ds.generation}; an ingest reconciles it")
    return problems
