"""SQLite docstore: the source of truth of an index.

Tables:
    meta(key, value)            generation counter, embedder fingerprint, format version
    files(source, sha256, ...)  one row per file seen: status ok | failed | kept (deleted from disk, chunks kept)
    chunks(id, source, ...)     chunk text and metadata, plus the BM25 tokens (space-joined)
    vectors(id, v)              embedding bytes (float16 or float32, meta ``vector_dtype``; absent = float32, the
                                format before float16), so the FAISS file can be rebuilt without re-embedding

Every change to the index is one SQLite transaction that also bumps ``generation``; the FAISS file is a cache
tagged with the generation it was built from (see :mod:`rag.index.layout`). WAL mode lets readers run while a writer writes.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from rag.core.config import StoreConfig
from rag.core.errors import ConfigError, IndexStateError
from rag.core.types import Chunk, chunk_id

VECTOR_DTYPES = {"float16": np.float16, "float32": np.float32}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    source TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL, error_kind TEXT, error TEXT, pages INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0, seconds REAL NOT NULL DEFAULT 0, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, position INTEGER NOT NULL, page INTEGER,
    heading TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL, text TEXT NOT NULL, tokens TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, v BLOB NOT NULL);
"""


@dataclass(frozen=True)
class FileRecord:
    """A row of the ``files`` table."""

    source: str
    sha256: str
    size: int
    mtime_ns: int
    status: str  # ok | failed | kept
    error_kind: str | None = None
    error: str = ""
    pages: int = 0
    chunks: int = 0
    seconds: float = 0.0


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection; on read-only media (no ``-shm`` file can be made next to a WAL database) the file is
    opened as immutable: nothing can write there, so nothing can change under the reader."""
    if not path.is_file():
        raise sqlite3.OperationalError(f"unable to open database file (no file {path.name})")
    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False, isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        if os.access(path.parent, os.W_OK):
            raise
    return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=30.0, check_same_thread=False,
                           isolation_level=None)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or a quota) is full: SQLite's SQLITE_FULL or an OSError ENOSPC / EDQUOT."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.Error) and "disk is full" in str(exc)


def store_error(path: Path, exc: sqlite3.Error | OSError) -> IndexStateError:
    """The one-line error for a docstore that cannot be used: damaged, read-only, or on a full disk."""
    directory = path.parent
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    if disk_full(exc):
        return IndexStateError(f"disk full while writing the index at {directory} ({reason}): free some space and run "
                               "the ingest again; the index keeps everything committed before")
    corrupt = type(exc) is sqlite3.DatabaseError or "malformed" in reason  # "file is not a database", ...
    if not corrupt and (not os.access(directory, os.W_OK) or "readonly" in reason or "read-only" in reason.lower()):
        return IndexStateError(f"the index at {directory} is read-only ({reason}): searching it works, an ingest "
                               "needs write access; remount it read-write or ingest into another folder with --index")
    if not corrupt and "unable to open" in reason:
        return IndexStateError(f"cannot open {path} ({reason}); check that the folder exists and is readable")
    return IndexStateError(f"{path} is damaged ({reason}); rebuild the index from your documents with: "
                           f"python ingest.py FOLDER --index {directory} --rebuild (the damaged file is moved aside)")


def move_aside(path: Path) -> Path:
    """Rename a damaged SQLite file (and its ``-wal`` / ``-shm``) to ``<name>.damaged-<time>``; return the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, target.with_name(target.name + suffix))
    return target


class DocStore:
    """A thin, typed wrapper over the SQLite file. One connection per instance; not shared across threads."""

    def __init__(self, path: Path, readonly: bool = False, vector_dtype: str | None = None) -> None:
        """Open (or create) the docstore at ``path``.

        Args:
            path: the SQLite file.
            readonly: open without write access (readers never take the writer lock).
            vector_dtype: float16 | float32 for vectors written into an index that holds none yet (default
                ``StoreConfig.vector_dtype``); an index that already holds vectors keeps its recorded dtype.
        """
        if vector_dtype is not None and vector_dtype not in VECTOR_DTYPES:
            raise ConfigError(f"store.vector_dtype={vector_dtype!r} is not one of {', '.join(VECTOR_DTYPES)}")
        self.path = Path(path)
        self.new_vector_dtype = vector_dtype or StoreConfig().vector_dtype
        try:
            if readonly:
                self.conn = _connect_readonly(self.path)
            else:
                self.conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.executescript(SCHEMA)
            self.conn.execute("PRAGMA busy_timeout=30000")
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # "file is not a database" here
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from None

    def damaged(self) -> str:
        """What ``PRAGMA quick_check`` finds wrong with the file ("" when nothing): reads every page once."""
        try:
            rows = [str(row[0]) for row in self.conn.execute("PRAGMA quick_check(3)").fetchall()]
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return "" if rows == ["ok"] else "; ".join(rows)

    def close(self) -> None:
        self.conn.close()

    # ---- meta -------------------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def get_json(self, key: str) -> Any:
        raw = self.get_meta(key)
        return json.loads(raw) if raw is not None else None

    def set_json(self, key: str, value: Any) -> None:
        self.set_meta(key, json.dumps(value, ensure_ascii=False, sort_keys=True))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", "0") or 0)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic change: commits and bumps the generation on success, rolls back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.set_meta("generation", str(self.generation + 1))  # visible inside the block as the new value
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk, an I/O error): then ROLLBACK would raise "no
            # transaction is active" and hide the real error, which is the one to report
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A consistent read of several queries (a deferred read transaction)."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    # ---- files ------------------------------------------------------------------------------------------------
    def files(self) -> dict[str, FileRecord]:
        rows = self.conn.execute(
            "SELECT source, sha256, size, mtime_ns, status, error_kind, error, pages, chunks, seconds FROM files"
        ).fetchall()
        return {r[0]: FileRecord(*r) for r in rows}

    def put_file(self, record: FileRecord) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                record.source, record.sha256, record.size, record.mtime_ns, record.status, record.error_kind,
                record.error, record.pages, record.chunks, record.seconds, time.time(),
            ),
        )

    def delete_file(self, source: str) -> list[int]:
        """Delete a file's row, chunks and vectors; return the removed chunk ids."""
        ids = self.chunk_ids_of(source)
        self.delete_chunks(ids)
        self.conn.execute("DELETE FROM files WHERE source=?", (source,))
        return ids

    # ---- chunks -----------------------------------------------------------------------------------------------
    def chunk_ids_of(self, source: str) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT id FROM chunks WHERE source=?", (source,))]

    def delete_chunks(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            marks = ",".join("?" * len(part))
            self.conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", part)
            self.conn.execute(f"DELETE FROM vectors WHERE id IN ({marks})", part)

    def add_chunks(self, chunks: Sequence[Chunk], tokens: Sequence[str], vectors: np.ndarray | None) -> None:
        """Insert chunks (``tokens[i]`` = space-joined BM25 tokens) and, if given, their float32 vectors [n, d]."""
        self.conn.executemany(
            'INSERT OR REPLACE INTO chunks(id, source, position, page, heading, start, "end", text, tokens)'
            " VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (c.id, c.source, c.position, c.page, json.dumps(list(c.heading), ensure_ascii=False), c.start, c.end,
                 c.text, t)
                for c, t in zip(chunks, tokens, strict=True)
            ],
        )
        if vectors is not None:
            self.put_vectors([c.id for c in chunks], vectors)

    @property
    def vector_dtype(self) -> str:
        """The dtype vectors are stored in: meta ``vector_dtype``; float32 for an index written before it existed
        (it holds vectors but no such key); ``new_vector_dtype`` for an index that holds no vectors yet."""
        recorded = self.get_meta("vector_dtype")
        if recorded is not None:
            return recorded
        has_vectors = self.conn.execute("SELECT 1 FROM vectors LIMIT 1").fetchone() is not None
        return "float32" if has_vectors else self.new_vector_dtype

    def round_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` as they will read back from this docstore (float32, rounded through float16 if stored so).

        Writers give FAISS these, so an index built incrementally equals one rebuilt from SQLite."""
        dtype = VECTOR_DTYPES[self.vector_dtype]
        return np.asarray(vectors, dtype=np.float32).astype(dtype).astype(np.float32)

    def put_vectors(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Store ``vectors`` [n, d] under chunk ``ids`` [n] in this docstore's vector dtype (recorded in meta)."""
        dtype_name = self.vector_dtype
        if self.get_meta("vector_dtype") is None:
            self.set_meta("vector_dtype", dtype_name)
        matrix = np.ascontiguousarray(vectors, dtype=VECTOR_DTYPES[dtype_name])
        self.conn.executemany(
            "INSERT OR REPLACE INTO vectors(id, v) VALUES (?, ?)",
            [(int(chunk_id), matrix[i].tobytes()) for i, chunk_id in enumerate(ids)],
        )

    def get_chunks(self, ids: Iterable[int]) -> dict[int, Chunk]:
        ids = list(ids)
        found: dict[int, Chunk] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.conn.execute(
                f'SELECT id, text, source, position, page, heading, start, "end" FROM chunks WHERE id IN ({marks})',
                part,
            )
            for r in rows:
                found[r[0]] = Chunk(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], r[7])
        return found

    def chunks_at(self, source: str, positions: Iterable[int]) -> list[Chunk]:
        """The chunks of ``source`` at these positions (those that exist), in position order.

        A chunk's id is :func:`chunk_id` of (source, the file's sha256, position), so the ids are computed from the
        file's record and read by primary key: the table is indexed by source only, and selecting positions among a
        source's rows read all of them (~20 ms for a 6,000-chunk PDF, per hit that asks for its neighbours). When
        none of those ids is stored (the chunks are of another version of the file), the rows are searched."""
        wanted = sorted(set(positions))
        if not wanted:
            return []
        record = self.conn.execute("SELECT sha256 FROM files WHERE source=?", [source]).fetchone()
        if record is not None:
            computed = self.get_chunks(chunk_id(source, record[0], p) for p in wanted)
            by_id = sorted((c for c in computed.values() if c.source == source), key=lambda c: c.position)
            if by_id:
                return by_id
        marks = ",".join("?" * len(wanted))
        ids = [r[0] for r in self.conn.execute(
            f"SELECT id FROM chunks WHERE source=? AND position IN ({marks}) ORDER BY position", [source, *wanted])]
        found = self.get_chunks(ids)
        return [found[i] for i in ids if i in found]

    def all_tokens(self) -> tuple[list[int], list[str]]:
        """(ids, space-joined tokens) of every chunk, in id order."""
        rows = self.conn.execute("SELECT id, tokens FROM chunks ORDER BY id").fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def all_vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n], vectors float32 [n, dim]) in id order, whatever dtype they are stored in."""
        rows = self.conn.execute("SELECT id, v FROM vectors ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, dim), dtype=np.float32)
        dtype = VECTOR_DTYPES[self.vector_dtype]
        width = dim * np.dtype(dtype).itemsize
        if any(len(r[1]) != width for r in rows):  # a row of another dtype: decode each row by its own length
            by_size = {dim * np.dtype(t).itemsize: t for t in VECTOR_DTYPES.values()}
            matrix = np.zeros((len(rows), dim), dtype=np.float32)
            for i, r in enumerate(rows):
                if len(r[1]) not in by_size:
                    raise ValueError(f"vector of chunk {r[0]} has {len(r[1])} bytes, not dim {dim} in float16/32")
                matrix[i] = np.frombuffer(r[1], dtype=by_size[len(r[1])])
            return ids, matrix
        return ids, np.frombuffer(b"".join(r[1] for r in rows), dtype=dtype).reshape(len(rows), dim).astype(np.float32)

    def count_chunks(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def count_vectors(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def chunk_id_set(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT id FROM chunks")}

    def vector_id_set(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT id FROM vectors")}
