"""An index folder: SQLite docstore (truth) + FAISS file (cache, tagged by generation) + BM25 (rebuilt in memory).

Layout of ``DIR``::

    manifest.json          format version, embedder, splitter settings, counts (self-description)
    docstore.sqlite        files, chunks (+ BM25 tokens), vectors, meta.generation
    faiss-<G>.index        FAISS over chunk ids, built from docstore generation G
    store.json             only when served from Milvus: the collection (rag/store/milvus.py); no FAISS file then
    .ingest.lock           held by the one writer (see rag.sync)

Readers never take the lock: they read the generation G from SQLite, load ``faiss-G.index`` if it exists and
otherwise rebuild the FAISS index in memory from the vectors in SQLite (a writer that crashed before writing the
FAISS file leaves exactly this state). Before each search the generation is re-read; when a writer has committed
since, the reader reloads, so deleted files stop being answered at once. A Milvus collection is opened once (it is
live); its results are checked against the docstore, so ids a writer deleted are never answered.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from rag.bm25 import BM25, TOKENIZER_VERSION, current_tokens
from rag.config import RagConfig
from rag.docstore import DocStore
from rag.embed import Embedder
from rag.errors import IndexStateError
from rag.store import VectorStore, effective_config, external_problems, filter_known, open_external
from rag.store.faiss import FaissStore
from rag.types import Chunk, chunk_id

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DOCSTORE = "docstore.sqlite"
LOCK = ".ingest.lock"
BM25_TOKENIZER = TOKENIZER_VERSION  # rag/bm25.py; tokens of another version are re-made


def faiss_path(directory: Path, generation: int) -> Path:
    return Path(directory) / f"faiss-{generation}.index"


def index_info(docstore: DocStore) -> dict[str, Any]:
    """The self-description of an index, read from the docstore in one consistent snapshot."""
    with docstore.snapshot():
        files = docstore.files()
        return {
            "format_version": int(docstore.get_meta("format_version", str(FORMAT_VERSION)) or FORMAT_VERSION),
            "generation": docstore.generation,
            "embedder": docstore.get_json("embedder"),
            "split": docstore.get_json("split"),
            "bm25": {"tokenizer": docstore.get_meta("bm25_tokenizer", BM25_TOKENIZER)},
            "counts": {
                "files": sum(1 for f in files.values() if f.status != "failed"),
                "failed_files": sum(1 for f in files.values() if f.status == "failed"),
                "chunks": docstore.count_chunks(),
                "vectors": docstore.count_vectors(),
            },
        }


def read_manifest(directory: Path, docstore: DocStore | None = None) -> dict[str, Any]:
    """The description of an index folder (from its docstore), or a clear error saying how to build one."""
    directory = Path(directory)
    if docstore is None:
        if not (directory / DOCSTORE).is_file():
            raise IndexStateError(f"no index at {directory}; build one with: python ingest.py FOLDER --index {directory}")
        docstore = DocStore(directory / DOCSTORE, readonly=True)
        try:
            manifest = index_info(docstore)
        finally:
            docstore.close()
    else:
        manifest = index_info(docstore)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexStateError(
            f"index {directory} has format version {version}, this app reads {FORMAT_VERSION}; "
            "rebuild it with: python ingest.py FOLDER --rebuild"
        )
    return manifest


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_manifest(directory: Path, docstore: DocStore, cfg: RagConfig) -> dict[str, Any]:
    """Write ``manifest.json`` (a human-readable copy of the docstore's description) atomically."""
    manifest = index_info(docstore)
    vectors = manifest["counts"]["vectors"]
    store_cfg = effective_config(cfg.store, directory)
    if store_cfg.kind == "milvus":
        from rag.store.milvus import DEFAULT_LITE_FILE, collection_name

        manifest["store"] = {"kind": "milvus", "uri": store_cfg.uri or DEFAULT_LITE_FILE,
                             "collection": collection_name(store_cfg, directory),
                             "milvus_index": store_cfg.milvus_index, "vector_dtype": docstore.vector_dtype}
    else:
        manifest["store"] = {"kind": cfg.store.kind, "faiss_index": cfg.store.faiss_index,
                             "faiss_kind": FaissStore.kind_for(cfg.store, vectors) if vectors else None,
                             "vector_dtype": docstore.vector_dtype if vectors else None,
                             "file": faiss_path(Path("."), manifest["generation"]).name}
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json_atomic(Path(directory) / MANIFEST, manifest)
    return manifest


def check_embedder(manifest: dict[str, Any], embedder: Embedder | None, directory: Path) -> None:
    """Refuse to mix embedders: the index's vectors only make sense with the model that made them."""
    stored = manifest.get("embedder")
    if stored is None or embedder is None:
        return
    if stored.get("fingerprint") != embedder.describe().get("fingerprint"):
        raise IndexStateError(
            f"index {directory} was built with embedder {stored.get('name')!r} (dim {stored.get('dim')}), "
            f"not {embedder.name!r} (dim {embedder.dim}); re-embed with: python ingest.py FOLDER --rebuild"
        )


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
            from rag.embed import embedder_from_manifest

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

    def chunks(self, ids: list[int]) -> dict[int, Chunk]:
        with self._lock:
            return self.docstore.get_chunks(ids)

    def stats(self) -> dict[str, Any]:
        """Counts and the embedder, for CLIs and the UI."""
        self.refresh()
        return {
            "directory": str(self.directory),
            "generation": self.generation,
            "embedder": (self.manifest.get("embedder") or {}).get("name", "none (BM25 only)"),
            **self.manifest.get("counts", {}),
        }


def _check_versions(docstore: DocStore, files: dict[str, Any]) -> list[str]:
    """Each file's chunks must all come from one version of it (ids derive from the file's sha256)."""
    problems = []
    by_source: dict[str, set[int]] = {}
    for chunk_id_, source in docstore.conn.execute("SELECT id, source FROM chunks"):
        by_source.setdefault(source, set()).add(chunk_id_)
    for source in set(by_source) - set(files):
        problems.append(f"{source}: chunks without a file row")
    for source, record in files.items():
        have = by_source.get(source, set())
        if record.status == "failed" and have:
            continue  # a failed update keeps the previous version, whose sha is no longer recorded
        want = {chunk_id(source, record.sha256, position) for position in range(record.chunks)}
        if have != want:
            problems.append(f"{source}: chunks do not match version {record.sha256[:12]} ({len(have)} vs {len(want)})")
    return problems


def check_integrity(directory: str | Path) -> list[str]:
    """Problems found in an index folder (empty list = consistent). Opens read-only; loads no model."""
    directory = Path(directory)
    problems: list[str] = []
    try:
        manifest = read_manifest(directory)
    except IndexStateError as exc:
        return [str(exc)]
    docstore = DocStore(directory / DOCSTORE, readonly=True)
    try:
        on_disk = directory / MANIFEST
        if on_disk.is_file():
            try:
                json.loads(on_disk.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                problems.append(f"{on_disk} is not valid JSON")
        with docstore.snapshot():
            chunk_ids = docstore.chunk_id_set()
            vector_ids = docstore.vector_id_set()
            files = docstore.files()
            generation = docstore.generation
        info = manifest.get("embedder")
        if info is not None and chunk_ids != vector_ids:
            problems.append(f"{len(chunk_ids ^ vector_ids)} chunks lack a vector or vectors lack a chunk")
        counted = sum(f.chunks for f in files.values())
        if counted != len(chunk_ids):
            problems.append(f"files table counts {counted} chunks, chunks table holds {len(chunk_ids)}")
        problems.extend(_check_versions(docstore, files))
        store_cfg = effective_config(RagConfig().store, directory)
        if info is not None and store_cfg.kind != "faiss":
            problems.extend(external_problems(docstore, directory, store_cfg, int(info["dim"]), vector_ids))
        elif info is not None:
            path = faiss_path(directory, generation)
            if path.is_file():
                store = FaissStore.load(path, int(info["dim"]), RagConfig().store)
                if set(store.ids().tolist()) != vector_ids:
                    problems.append(f"{path.name} ids differ from the docstore's vectors")
    finally:
        docstore.close()
    return problems
