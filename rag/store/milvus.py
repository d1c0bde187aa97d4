"""Milvus vector store: the scale-out twin of FaissStore, one collection per index folder, through pymilvus.

The SQLite docstore stays the truth (it keeps every vector, so the collection can always be refilled); the collection
is a shared cache of those vectors that several app processes can search. Each row holds the chunk id (int64 primary
key), the vector, the file's ``source`` and ``sha256``; the collection's properties record the docstore generation
it reflects (``kbqa.generation``) and the embedder fingerprint (``kbqa.embedder``).

Where it lives (``store.uri``):
    ``milvus.db`` / ``/abs/path/x.db``   milvus-lite: a local folder, relative paths resolve inside the index folder.
                                        milvus-lite is single-process (it flocks the folder): one process at a time
                                        may open it, the others get a clear error. Fine for one app process that
                                        also ingests; use a server for several processes.
    ``http://host:19530``               a Milvus standalone / cluster server (same client, same code).

Why metric IP: the vectors are L2-normalised (IP = cosine) and IP scores equal FaissStore's exactly, so
``retrieve.score_threshold`` means the same on both backends.

The collection's settings (uri, name) and the store itself are here; keeping the collection in line with the
docstore, and the folder's ``store.json`` that says which collection serves it, are in :mod:`rag.index.milvus_sync`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.core.config import StoreConfig
from rag.core.errors import ConfigError, IndexStateError

log = logging.getLogger(__name__)

MILVUS_INDEXES = ("HNSW", "IVF_FLAT", "FLAT")
DEFAULT_LITE_FILE = "milvus.db"
GENERATION_KEY = "kbqa.generation"
EMBEDDER_KEY = "kbqa.embedder"
INDEX_DIR_KEY = "kbqa.index_dir"
INSTALL_HINT = "pip install pymilvus==3.0.2 milvus-lite==3.2.2 (requirements-extra.txt)"
BATCH_ROWS = 2000  # rows per insert call: 2000 x 768 float32 = 6 MB, well under the 64 MB gRPC message limit
MAX_TOP_K = 16384  # Milvus's limit on limit / top-k

_lite_users: dict[str, int] = {}  # milvus-lite path -> open MilvusStores in this process (the server is released at 0)
_lite_lock = threading.Lock()


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:
        raise ConfigError(f"store.kind=milvus needs pymilvus; install it with: {INSTALL_HINT}") from exc
    return pymilvus


# ---- settings ----------------------------------------------------------------------------------------------------
def is_server_uri(uri: str) -> bool:
    """A Milvus server address (what pymilvus connects to over the network) rather than a milvus-lite file."""
    scheme, sep, _ = uri.partition("://")
    return (bool(sep) and scheme.lower() in ("http", "https", "tcp")) or uri.startswith("unix:")


def resolve_uri(cfg: StoreConfig, directory: Path) -> str:
    """The uri pymilvus gets: a server address as given, or an absolute ``.db`` path (relative = in the index folder)."""
    uri = cfg.uri.strip() or DEFAULT_LITE_FILE
    if is_server_uri(uri):
        return uri
    if not uri.endswith(".db"):
        raise ConfigError(f"store.uri={cfg.uri!r} is neither a Milvus server (http://host:19530) nor a milvus-lite "
                          f"file; a milvus-lite file must end in .db, e.g. store.uri={DEFAULT_LITE_FILE}")
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() else (Path(directory) / path).resolve())


def collection_name(cfg: StoreConfig, directory: Path) -> str:
    """``store.collection``, or ``kbqa_<index folder name>`` made legal for Milvus (letters, digits, _; <= 255).

    A name that lost characters to the sanitising (e.g. a Chinese folder name) gets a short hash of the original,
    so two such folders do not share a collection."""
    if cfg.collection:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", cfg.collection):
            raise ConfigError(f"store.collection={cfg.collection!r} is not a legal Milvus name; use letters, digits "
                              "and _, starting with a letter or _, at most 255 characters")
        return cfg.collection
    folder = Path(directory).resolve().name
    clean = re.sub(r"[^A-Za-z0-9_]", "_", folder)
    if clean != folder:
        clean = f"{clean}_{hashlib.sha1(folder.encode()).hexdigest()[:8]}"
    return f"kbqa_{clean}"[:255]


# ---- the store ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectionState:
    """What a collection says it reflects (None when never recorded: a new or foreign collection)."""

    generation: int | None
    embedder: str | None
    index_dir: str | None


class MilvusStore:
    """A Milvus collection over int64 chunk ids, searched by inner product on L2-normalised vectors.

    ``external`` tells the index that the vectors live outside the folder and may briefly disagree with the docstore
    (another writer, a crash); it drops search results whose ids the docstore no longer holds.
    """

    external = True
    supports_remove = True
    kind = "milvus"

    def __init__(self, client: Any, uri: str, collection: str, dim: int, cfg: StoreConfig,
                 lite_path: str | None) -> None:
        self.client, self.uri, self.collection, self.dim, self.cfg = client, uri, collection, dim, cfg
        self.lite_path = lite_path
        self.index_type = cfg.milvus_index

    @classmethod
    def connect(cls, cfg: StoreConfig, directory: Path, dim: int, *, create: bool, recreate: bool = False,
                exist_ok: bool = True) -> MilvusStore:
        """Open the collection for ``directory``; create it (empty) when ``create``; drop it first when ``recreate``;
        refuse an existing one unless ``exist_ok`` (``rag.cli.migrate`` without ``--overwrite``).

        Raises:
            ConfigError: bad ``store.*`` settings or pymilvus missing.
            IndexStateError: the server is unreachable, the milvus-lite file is held by another process, the
                collection is missing (and not ``create``) or holds vectors of another dimension.
        """
        if cfg.milvus_index not in MILVUS_INDEXES:
            raise ConfigError(f"store.milvus_index={cfg.milvus_index!r} is not one of {', '.join(MILVUS_INDEXES)}")
        uri = resolve_uri(cfg, directory)
        name = collection_name(cfg, directory)
        lite_path = None if is_server_uri(uri) else uri
        client = _connect(uri, lite_path)
        store = cls(client, uri, name, dim, cfg, lite_path)
        try:
            if recreate and client.has_collection(name):
                client.drop_collection(name)
            if not client.has_collection(name):
                if not create:
                    raise IndexStateError(
                        f"no Milvus collection {name!r} at {uri}; fill it with: python -m rag.migrate --from "
                        f"faiss:{directory} --to milvus:{cfg.uri or DEFAULT_LITE_FILE} (or an ingest with store.kind=milvus)")
                store._create()
            else:
                store._check_dim()
                if not exist_ok:
                    raise IndexStateError(f"Milvus collection {name!r} already exists at {uri}; pass --overwrite to "
                                          "replace it, or --collection NAME to use another")
                client.load_collection(name)
        except BaseException:
            store.close()
            raise
        return store

    def _create(self) -> None:
        pymilvus = _pymilvus()
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False,
                                           description="kbqa chunk vectors (the index's SQLite docstore is the truth)")
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("source", pymilvus.DataType.VARCHAR, max_length=4096)
        schema.add_field("sha256", pymilvus.DataType.VARCHAR, max_length=64)
        self.index_type = self._supported_index_type(self.cfg.milvus_index)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type=self.index_type, metric_type="IP",
                         params=self._build_params())
        self.client.create_collection(self.collection, schema=schema, consistency_level="Strong")
        # sync=False: the collection is empty, and waiting polls every 0.5 s through a call milvus-lite lacks
        self.client.create_index(self.collection, params, sync=False)
        self.client.load_collection(self.collection)
        log.info("created Milvus collection %s at %s (dim %d, %s, IP)", self.collection, self.uri, self.dim,
                 self.index_type)

    def _supported_index_type(self, wanted: str) -> str:
        """milvus-lite builds HNSW / IVF through faiss-cpu; without it only FLAT (brute force) works."""
        if self.lite_path is None or wanted == "FLAT":
            return wanted
        try:
            from milvus_lite.index.factory import KNOWN_VECTOR_INDEX_TYPES, is_faiss_available
        except ImportError:  # another milvus-lite layout: let it decide
            return wanted
        if wanted in KNOWN_VECTOR_INDEX_TYPES and is_faiss_available():
            return wanted
        log.warning("milvus-lite here cannot build a %s index (needs faiss-cpu); using FLAT (exact) instead", wanted)
        return "FLAT"

    def _build_params(self) -> dict[str, int]:
        if self.index_type == "HNSW":
            return {"M": self.cfg.hnsw_m, "efConstruction": self.cfg.hnsw_ef_construction}
        if self.index_type == "IVF_FLAT":
            return {"nlist": self.cfg.ivf_nlist or 128}  # per segment in Milvus, so a fixed default is fine
        return {}

    def _search_params(self, k: int) -> dict[str, Any]:
        if self.index_type == "HNSW":
            return {"metric_type": "IP", "params": {"ef": max(k, self.cfg.hnsw_ef_search)}}
        if self.index_type == "IVF_FLAT":
            return {"metric_type": "IP", "params": {"nprobe": self.cfg.ivf_nprobe}}
        return {"metric_type": "IP", "params": {}}

    def _check_dim(self) -> None:
        info = self.client.describe_collection(self.collection)
        fields = {f["name"]: f for f in info.get("fields", [])}
        have = int(fields.get("vector", {}).get("params", {}).get("dim", -1))
        if have != self.dim:
            raise IndexStateError(
                f"Milvus collection {self.collection!r} at {self.uri} holds dim {have} vectors, this index has dim "
                f"{self.dim}; replace it (python -m rag.migrate ... --overwrite, or python ingest.py FOLDER --rebuild) "
                "or use another collection (store.collection / --collection)")
        index = (self.client.describe_index(self.collection, "vector") or {}).get("index_type")
        self.index_type = index if index in MILVUS_INDEXES else self.index_type

    # ---- VectorStore protocol --------------------------------------------------------------------------------
    def __len__(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def add(self, ids: np.ndarray, vectors: np.ndarray, sources: Sequence[str] | None = None,
            shas: Sequence[str] | None = None) -> None:
        """Insert vectors [n, dim] under int64 ids [n] (not present yet), with each row's file source and sha256."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors shape {vectors.shape} does not match ({len(ids)}, {self.dim})")
        sources = sources if sources is not None else [""] * len(ids)
        shas = shas if shas is not None else [""] * len(ids)
        for start in range(0, len(ids), BATCH_ROWS):
            stop = min(len(ids), start + BATCH_ROWS)
            rows = [{"id": int(ids[i]), "vector": vectors[i], "source": sources[i], "sha256": shas[i]}
                    for i in range(start, stop)]
            self.client.insert(self.collection, rows)

    def remove(self, ids: np.ndarray) -> int:
        present = self.present(ids)
        for start in range(0, len(present), BATCH_ROWS):
            self.client.delete(self.collection, ids=present[start:start + BATCH_ROWS])
        return len(present)

    def present(self, ids: Iterable[int]) -> list[int]:
        """Which of ``ids`` the collection holds."""
        wanted = sorted({int(i) for i in ids})
        found: list[int] = []
        for start in range(0, len(wanted), BATCH_ROWS):
            part = wanted[start:start + BATCH_ROWS]
            rows = self.client.query(self.collection, filter=f"id in {part}", output_fields=["id"],
                                     consistency_level="Strong")
            found.extend(int(r["id"]) for r in rows)
        return found

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query [q, dim]: (scores float32 [q, k], ids int64 [q, k]); empty slots hold id -1, score 0."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, MAX_TOP_K))
        results = self.client.search(self.collection, data=list(queries), limit=k, output_fields=["id"],
                                     search_params=self._search_params(k), consistency_level="Strong")
        scores = np.zeros((len(queries), k), dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, hits in enumerate(results):
            for col, hit in enumerate(list(hits)[:k]):
                ids[row, col] = int(hit["id"])
                scores[row, col] = float(hit["distance"])
        return scores, ids

    def ids(self) -> np.ndarray:
        """Every id held (int64, any order): one query on milvus-lite; page by page on a server (a query's limit
        is at most 16,384 rows there; milvus-lite has no limit but also no timestamp service for iterators)."""
        if self.lite_path is not None:
            rows = self.client.query(self.collection, filter=f"id >= {np.iinfo(np.int64).min}", output_fields=["id"])
            return np.fromiter((int(r["id"]) for r in rows), dtype=np.int64, count=len(rows))
        iterator = self.client.query_iterator(self.collection, batch_size=MAX_TOP_K, filter="", output_fields=["id"])
        parts: list[np.ndarray] = []
        try:
            while batch := iterator.next():
                parts.append(np.fromiter((int(r["id"]) for r in batch), dtype=np.int64, count=len(batch)))
        finally:
            iterator.close()
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def save(self, path: Path | None = None) -> None:
        """Milvus persists by itself; flushing seals the rows written so far (``path`` is ignored)."""
        self.client.flush(self.collection)

    def close(self) -> None:
        """Close the client; the last user of a milvus-lite file in this process releases it for other processes."""
        try:
            self.client.close()
        finally:
            if self.lite_path is not None:
                _release_lite(self.lite_path)
                self.lite_path = None

    # ---- what the collection reflects ------------------------------------------------------------------------
    def state(self) -> CollectionState:
        props = self.client.describe_collection(self.collection).get("properties") or {}
        generation = props.get(GENERATION_KEY)
        return CollectionState(int(generation) if generation not in (None, "") else None, props.get(EMBEDDER_KEY),
                               props.get(INDEX_DIR_KEY))

    def set_state(self, generation: int, embedder: str, index_dir: Path) -> None:
        self.client.alter_collection_properties(self.collection, properties={
            GENERATION_KEY: str(generation), EMBEDDER_KEY: embedder, INDEX_DIR_KEY: str(Path(index_dir).resolve())})


def _connect(uri: str, lite_path: str | None) -> Any:
    pymilvus = _pymilvus()
    if lite_path is not None:
        Path(lite_path).parent.mkdir(parents=True, exist_ok=True)
        with _lite_lock:
            _lite_users[lite_path] = _lite_users.get(lite_path, 0) + 1
    try:
        return pymilvus.MilvusClient(uri, timeout=30)
    except Exception as exc:  # pymilvus raises MilvusException / ConnectionConfigException with terse messages
        if lite_path is not None:
            _release_lite(lite_path)
            raise IndexStateError(
                f"cannot open the milvus-lite file {lite_path} ({exc}); milvus-lite lets one process at a time open "
                "it: stop the other process (app or ingest), or serve the index from a Milvus server "
                "(store.uri=http://HOST:19530)") from exc
        raise IndexStateError(f"cannot reach Milvus at {uri} ({exc}); start the server (see docs/SCALING.md) or "
                              "fix store.uri") from exc


def _release_lite(path: str) -> None:
    with _lite_lock:
        left = _lite_users.get(path, 1) - 1
        if left > 0:
            _lite_users[path] = left
            return
        _lite_users.pop(path, None)
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(path)
