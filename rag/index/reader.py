"""The read side of an index folder: :class:`KnowledgeIndex` (dense + BM25 search, chunk lookup) over the generation a writer last committed."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rag.core.config import RagConfig
from rag.core.types import Chunk
from rag.embed.embedder import Embedder
from rag.index.bm25 import BM25, current_tokens
from rag.index.bridge import Dictionary
from rag.index.docstore import DocStore
from rag.index.external import filter_known, open_external
from rag.index.layout import DOCSTORE, check_embedder, faiss_path, read_manifest
from rag.index.milvus_sync import effective_config
from rag.store.base import VectorStore
from rag.store.faiss import FaissStore

log = logging.getLogger(__name__)


def load_store(docstore: DocStore, directory: Path, cfg: RagConfig, dim: int) -> VectorStore:
    """The FAISS store for the docstore's current generation: from its file when tagged right, else rebuilt.

    A folder served from Milvus (``store.kind: milvus`` or its ``store.json``) gets the collection instead."""
    store_cfg = effective_config(cfg.store, directory)
    if store_cfg.kind != "faiss":
        return open_external(docstore, directory, store_cfg, dim)
    with docstore.snapshot():
        generation = docstore.generation
        path = faiss_path(directory, generation)
        if path.is_file():
            try:
                store = FaissStore.load(path, dim, cfg.store)
                if len(store) == docstore.count_vectors():
                    return store
                log.warning("FAISS file %s holds %d vectors, docstore %d; rebuilding", path, len(store),
                            docstore.count_vectors())
            except (RuntimeError, ValueError) as exc:
                log.warning("FAISS file %s unreadable (%s); rebuilding from the docstore", path, exc)
        ids, vectors = docstore.all_vectors(dim)
    log.info("building FAISS index from %d stored vectors (generation %d)", len(ids), generation)
    return FaissStore.build(dim, cfg.store, ids, vectors)


class KnowledgeIndex:
    """A read-side handle on an index folder: dense search, BM25 search, chunk lookup. Thread-safe.

    Use :meth:`open`; it never writes to the folder.
    """

    def __init__(self, directory: Path, cfg: RagConfig, embedder: Embedder | None) -> None:
        self.directory = Path(directory)
        self.cfg = cfg
        self.embedder = embedder
        self.manifest: dict[str, Any] = {}
        self.generation = -1
        self.store: VectorStore | None = None
        self.bm25: BM25 | None = None
        self._lock = threading.RLock()
        self.docstore = DocStore(self.directory / DOCSTORE, readonly=True)

    @classmethod
    def open(cls, directory: str | Path, cfg: RagConfig, embedder: Embedder | None | str = "auto") -> KnowledgeIndex:
        """Open an index for search. ``embedder="auto"`` re-creates the embedder the manifest names."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        if isinstance(embedder, str):
            from rag.embed.embedder import embedder_from_manifest

            info = manifest.get("embedder")
            embedder = embedder_from_manifest(info, cfg.embed) if info else None
        check_embedder(manifest, embedder, directory)
        index = cls(directory, cfg, embedder)
        index.refresh(force=True)
        return index

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.docstore.close()

    @property
    def dense_enabled(self) -> bool:
        return self.embedder is not None and self.store is not None

    def refresh(self, force: bool = False) -> bool:
        """Reload FAISS and BM25 when a writer committed a new generation; return True if reloaded."""
        with self._lock:
            generation = self.docstore.generation
            if not force and generation == self.generation:
                return False
            self.manifest = read_manifest(self.directory, self.docstore)
            info = self.manifest.get("embedder")
            if self.embedder is not None and info is not None and not getattr(self.store, "external", False):
                self.store = load_store(self.docstore, self.directory, self.cfg, int(info["dim"]))  # Milvus: once
            with self.docstore.snapshot():
                ids, tokens = current_tokens(self.docstore)
            self.bm25 = BM25(ids, tokens)
            self.generation = generation
            return True

    def search_dense(self, query: str, k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine) best first; empty when the index has no dense part."""
        self.refresh()
        if self.embedder is None or self.store is None:
            return []
        vector = self.embedder.embed_query(query)
        with self._lock:
            scores, ids = self.store.search(vector[None, :], k)
            found = [(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
            return filter_known(self.docstore, found) if getattr(self.store, "external", False) else found

    def search_bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        self.refresh()
        with self._lock:
            return self.bm25.search(query, k) if self.bm25 is not None else []

    def search_bridge(self, query: str, dictionary: Dictionary, k: int) -> tuple[str, list[tuple[int, float]]]:
        """BM25 over the question's words in the other language (:mod:`rag.index.bridge`): (that query, the
        ranking); ("", []) when the dictionary knows none of them."""
        self.refresh()
        with self._lock:
            bm25 = self.bm25
            if bm25 is None:
                return "", []
            translated = dictionary.bridge_query(query, lambda term: entry[2] if (
                entry := bm25.postings.get(term)) is not None else None)
            return translated, bm25.search(translated, k) if translated else []

    def chunks(self, ids: list[int]) -> dict[int, Chunk]:
        with self._lock:
            return self.docstore.get_chunks(ids)

    def neighbours(self, chunk: Chunk, reach: int = 1) -> list[Chunk]:
        """The chunks of the same file up to ``reach`` positions before and after ``chunk`` (not itself)."""
        positions = [p for p in range(chunk.position - reach, chunk.position + reach + 1) if p != chunk.position]
        with self._lock:
            return self.docstore.chunks_at(chunk.source, positions)

    def idf(self, term: str) -> float | None:
        """BM25 inverse document frequency of a (tokenised) term; None when no chunk holds it."""
        self.refresh()
        with self._lock:
            entry = self.bm25.postings.get(term) if self.bm25 is not None else None
            return entry[2] if entry is not None else None

    def idfs(self, terms: Iterable[str]) -> dict[str, float | None]:
        """:meth:`idf` of several terms under one refresh."""
        self.refresh()
        with self._lock:
            postings = self.bm25.postings if self.bm25 is not None else {}
            return {t: entry[2] if (entry := postings.get(t)) is not None else None for t in terms}

    def max_idf(self) -> float:
        """The idf a term held by no chunk would have (BM25's formula with document frequency 0)."""
        n = len(self.bm25) if self.bm25 is not None else 0
        return math.log(1.0 + (n + 0.5) / 0.5)

    def stats(self) -> dict[str, Any]:
        """Counts and the embedder, for CLIs and the UI."""
        self.refresh()
        return {
            "directory": str(self.directory),
            "generation": self.generation,
            "embedder": (self.manifest.get("embedder") or {}).get("name", "none (BM25 only)"),
            **self.manifest.get("counts", {}),
        }
