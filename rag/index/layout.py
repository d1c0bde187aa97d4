"""An index folder: SQLite docstore (truth) + FAISS file (cache, tagged by generation) + BM25 (rebuilt in memory).

Layout of ``DIR``::

    manifest.json          format version, embedder, splitter settings, counts (self-description)
    docstore.sqlite        files, chunks (+ BM25 tokens), vectors, meta.generation
    faiss-<G>.index        FAISS over chunk ids, built from docstore generation G
    store.json             only when served from Milvus: the collection (rag/store/milvus.py); no FAISS file then
    .ingest.lock           held by the one writer (see rag.index.sync)

Readers never take the lock: they read the generation G from SQLite, load ``faiss-G.index`` if it exists and
otherwise rebuild the FAISS index in memory from the vectors in SQLite (a writer that crashed before writing the
FAISS file leaves exactly this state). Before each search the generation is re-read; when a writer has committed
since, the reader reloads, so deleted files stop being answered at once. A Milvus collection is opened once (it is
live); its results are checked against the docstore, so ids a writer deleted are never answered.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rag.core.config import RagConfig
from rag.core.errors import IndexStateError
from rag.core.paths import write_json_atomic
from rag.embed.embedder import Embedder
from rag.index.bm25 import TOKENIZER_VERSION
from rag.index.docstore import DocStore
from rag.index.milvus_sync import effective_config
from rag.store.faiss import FaissStore

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








