"""Sync a folder into an index: hash diff -> add / update / delete, one writer at a time, crash-safe.

What happens on ``sync_folder``:
1. take the index's file lock (a second ingest waits or fails with a clear message);
2. hash every file; unchanged ones cost only that hash;
3. parse new and changed files in isolated worker processes (rag.ingest.load), split them, embed the chunks;
4. commit each group of files in one SQLite transaction (old chunks out, new chunks + vectors in), so a crash
   keeps every finished group and loses nothing older; ``--rebuild`` runs as a single transaction instead;
5. remove the chunks of deleted files (unless asked to keep them);
6. write the FAISS file for the new generation (temp file + ``os.replace``) and the manifest; with
   ``store.kind: milvus`` apply the same diff to the collection instead and record the generation in it.
   (:mod:`rag.index.sync_store`; the report types are in :mod:`rag.index.report`, re-exported here.)
A kill -9 anywhere leaves SQLite at the last commit; a missing or stale FAISS file is rebuilt from SQLite on open, and
a collection that reflects another generation is reconciled with SQLite by the next sync.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from rag.core.config import RagConfig
from rag.core.errors import IndexStateError, RagError
from rag.core.paths import open_inside
from rag.core.types import Chunk, ParsedFile
from rag.embed.embedder import Embedder
from rag.index.bm25 import chunk_tokens, store_current_tokens
from rag.index.docstore import DocStore, FileRecord, disk_full, move_aside, store_error
from rag.index.layout import BM25_TOKENIZER, DOCSTORE, FORMAT_VERSION, LOCK, MANIFEST, faiss_path, write_manifest
from rag.index.milvus_sync import effective_config
from rag.index.report import FileReport, IngestReport
from rag.index.sync_store import write_store
from rag.ingest.load import discover_files, parse_files
from rag.ingest.split import embedding_text, split_documents

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (stage: hash | parse | embed, done, total)


def file_sha256(path: Path, root: Path | None = None) -> str:
    """SHA-256 of a regular file under ``root``; OSError for anything else (a FIFO swapped in after discovery must
    not block; a link swapped in that leads outside ``root`` is not read: :func:`rag.core.paths.open_inside`)."""
    digest = hashlib.sha256()
    with open(open_inside(path, root), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def writer_lock(index_dir: Path, wait: bool) -> Iterator[None]:
    """The one-writer lock of an index folder."""
    lock = FileLock(str(index_dir / LOCK))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        raise IndexStateError(
            f"another ingest is writing to {index_dir}; wait for it to finish (or pass --wait to queue behind it)"
        ) from None
    except OSError as exc:  # a read-only mount, a full disk: the lock file cannot be made
        raise store_error(index_dir / DOCSTORE, exc) from None
    try:
        yield
    finally:
        lock.release()


@dataclass
class _Pending:
    source: str
    record: FileRecord
    chunks: list[Chunk]
    texts: list[str]


class _Sync:
    """State of one sync run (kept out of the public API)."""

    def __init__(self, ds: DocStore, cfg: RagConfig, embedder: Embedder | None, report: IngestReport,
                 progress: ProgressFn | None, single_transaction: bool) -> None:
        self.ds, self.cfg, self.embedder, self.report = ds, cfg, embedder, report
        self.progress = progress or (lambda stage, done, total: None)
        self.single = single_transaction
        self.pending: list[_Pending] = []
        self.changed = False
        self.removed_ids: list[int] = []
        self.added_ids: list[int] = []
        self.added_vectors: list[np.ndarray] = []
        self.embedded = 0
        self.embed_total = 0
        self.indexed = 0

    def tx(self) -> Any:
        self.changed = True
        return nullcontext() if self.single else self.ds.transaction()

    def flush(self) -> None:
        """Embed the pending files' chunks, then commit them together."""
        if not self.pending:
            return
        texts = [t for p in self.pending for t in p.texts]
        self.indexed += len(texts)
        vectors = self._embed(texts)
        tokens = [chunk_tokens(t, p.source) for p in self.pending for t in p.texts]
        offset = 0
        with self.tx():
            for item in self.pending:
                n = len(item.chunks)
                old = self.ds.chunk_ids_of(item.source)
                self.ds.delete_chunks(old)
                self.removed_ids.extend(old)
                part = vectors[offset: offset + n] if vectors is not None else None
                self.ds.add_chunks(item.chunks, tokens[offset: offset + n], part)
                self.ds.put_file(item.record)
                offset += n
        for item in self.pending:
            self.added_ids.extend(c.id for c in item.chunks)
        if vectors is not None:
            self.added_vectors.append(vectors)
        self.pending = []

    def _embed(self, texts: list[str]) -> np.ndarray | None:
        if self.embedder is None:
            return None
        self.embed_total += len(texts)
        before = self.embedded

        def advance(done: int) -> None:  # the embedder reports texts done so far in this call
            self.embedded = before + done
            self.progress("embed", self.embedded, self.embed_total)

        # one call per flush: the embedder batches by length itself (and, on CUDA, tokenises ahead of the GPU)
        parts = [self.embedder.embed_documents(texts, progress=advance)] if texts else []
        self.embedded = before + len(texts)
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, self.embedder.dim), np.float32)


def _prepare(ds: DocStore, cfg: RagConfig, embedder: Embedder | None, directory: Path, rebuild: bool) -> bool:
    """Check the index against this run's embedder; return True when every file must be re-split."""
    info = embedder.describe() if embedder is not None else None
    stored = ds.get_json("embedder")
    fresh = ds.get_meta("format_version") is None
    if not fresh and not rebuild:
        version = int(ds.get_meta("format_version") or 0)
        if version != FORMAT_VERSION:
            raise IndexStateError(f"index {directory} has format version {version}; re-run with --rebuild")
        if (stored or {}).get("fingerprint") != (info or {}).get("fingerprint"):
            want = (info or {}).get("name", "none (BM25 only)")
            have = (stored or {}).get("name", "none (BM25 only)")
            raise IndexStateError(
                f"index {directory} was built with embedder {have!r}, this run uses {want!r}; "
                "re-embed everything with --rebuild, or set embed.model to the index's model"
            )
    return fresh or rebuild or ds.get_json("split") != asdict(cfg.split)


def _unchanged_row(source: str, sha: str, old: FileRecord | None, retry_failed: bool) -> FileReport | None:
    """The report row of a file that needs no work (same content as indexed), or None when it must be parsed."""
    if old is None or old.sha256 != sha:
        return None
    if old.status in ("ok", "kept"):
        return FileReport(source, "unchanged", chunks=old.chunks, pages=old.pages)
    if old.status == "failed" and not retry_failed:
        status = "skipped" if old.error_kind == "unsupported" else "failed"
        note = "" if status == "skipped" else " (unchanged since the last ingest; --retry-failed re-parses it)"
        return FileReport(source, status, error_kind=old.error_kind, error=old.error + note)
    return None


EMBED_REQUEST = "embed_request"  # docstore key: the embed settings of the run that last wrote the index
_EMBED_IDENTITY = ("model", "revision", "source", "modelscope_id", "query_prefix", "passage_prefix",
                   "max_seq_length", "cache_dir", "fallback")


def embed_request(cfg: RagConfig) -> dict[str, Any]:
    """The ``embed.*`` settings that decide which embedder a run loads (not batch size, device, timeouts)."""
    settings = asdict(cfg.embed)
    return {key: settings[key] for key in _EMBED_IDENTITY}


def unchanged_report(folder: str | Path, cfg: RagConfig, index_dir: str | Path | None = None,
                     keep_deleted: bool | None = None, retry_failed: bool = False) -> IngestReport | None:
    """The report of a sync that would change nothing, found without loading the embedder; None if there is work.

    "Nothing" means: the index was last written by a run with the same ``embed.*`` model settings, splitter, BM25
    tokenizer and format; every file has the content it was indexed with (or failed before and is not retried); no
    file has gone; the manifest and the FAISS file of the current generation are in place. Anything else returns
    None and :func:`sync_folder` runs with the embedder (which also checks the embedder's fingerprint).

    Raises:
        RagError: ``folder`` is not a folder (the same message as :func:`sync_folder`).
    """
    started = time.perf_counter()
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise RagError(f"knowledge folder {folder} does not exist; create it and put documents in it")
    directory = Path(index_dir or cfg.index.dir).resolve()
    if not (directory / DOCSTORE).is_file() or not (directory / MANIFEST).is_file():
        return None
    with ExitStack() as stack:
        try:  # another ingest is writing: the full sync waits for it or says so
            stack.enter_context(writer_lock(directory, wait=False))
        except IndexStateError:
            return None
        return _unchanged_report(folder, directory, cfg, keep_deleted, retry_failed, started)


def _unchanged_report(folder: Path, directory: Path, cfg: RagConfig, keep_deleted: bool | None, retry_failed: bool,
                      started: float) -> IngestReport | None:
    ds = DocStore(directory / DOCSTORE, readonly=True)
    try:
        if (ds.get_meta("format_version") != str(FORMAT_VERSION) or ds.get_json("split") != asdict(cfg.split)
                or ds.get_meta("bm25_tokenizer") != BM25_TOKENIZER or ds.get_json(EMBED_REQUEST) != embed_request(cfg)):
            return None
        generation = ds.generation
        stored_embedder = ds.get_json("embedder")
        if json.loads((directory / MANIFEST).read_text(encoding="utf-8")).get("generation") != generation:
            return None
        if stored_embedder is not None and effective_config(cfg.store, directory).kind == "faiss" \
                and not faiss_path(directory, generation).is_file():
            return None
        known = ds.files()
        report = IngestReport(str(directory), (stored_embedder or {}).get("name", "none (BM25 only)"))
        seen: set[str] = set()
        for path in discover_files(folder, cfg.load, exclude=[directory]):
            source = path.relative_to(folder).as_posix()
            seen.add(source)
            try:
                sha = file_sha256(path)
            except OSError:
                return None  # the full sync reports it
            row = _unchanged_row(source, sha, known.get(source), retry_failed)
            if row is None or (row.status == "unchanged" and known[source].status == "kept"):
                return None
            report.files.append(row)
        keep = cfg.index.keep_deleted if keep_deleted is None else keep_deleted
        if any(source not in seen and not (keep and record.status == "kept") for source, record in known.items()):
            return None
        for source, record in known.items():
            if source not in seen:
                report.files.append(FileReport(source, "kept", chunks=record.chunks, pages=record.pages))
        report.generation = generation
    finally:
        ds.close()
    report.seconds = time.perf_counter() - started
    report.files.sort(key=lambda f: f.source)
    return report


def sync_folder(
    folder: str | Path,
    cfg: RagConfig,
    embedder: Embedder | None,
    index_dir: str | Path | None = None,
    rebuild: bool = False,
    keep_deleted: bool | None = None,
    retry_failed: bool = False,
    wait: bool = False,
    progress: ProgressFn | None = None,
) -> IngestReport:
    """Bring the index at ``index_dir`` (default ``cfg.index.dir``) in line with the files under ``folder``.

    Args:
        folder: the knowledge folder.
        cfg: the app config (load / split / embed / store settings).
        embedder: the embedder to use, or None for a BM25-only index.
        index_dir: where the index lives.
        rebuild: re-parse and re-embed everything in one transaction (needed after changing the embedder).
        keep_deleted: keep chunks of files that disappeared (default ``cfg.index.keep_deleted``).
        retry_failed: re-parse files that failed before even if they did not change.
        wait: wait for another ingest to finish instead of failing.
        progress: callback (stage, done, total) for progress bars.

    Returns:
        The per-file report.

    Raises:
        IndexStateError: another ingest holds the index, the embedder differs, or the index is read-only, damaged
            (``rebuild=True`` moves a damaged docstore aside and starts afresh) or on a full disk.
    """
    directory = Path(index_dir or cfg.index.dir).resolve()
    try:
        return _sync_folder(folder, cfg, embedder, directory, rebuild, keep_deleted, retry_failed, wait, progress)
    except sqlite3.Error as exc:
        raise store_error(directory / DOCSTORE, exc) from None
    except OSError as exc:
        if disk_full(exc) or exc.errno == errno.EROFS:
            raise store_error(directory / DOCSTORE, exc) from None
        raise


def _open_for_rebuild(path: Path, vector_dtype: str) -> DocStore:
    """The docstore to rebuild into: the existing one, or a fresh one after moving a damaged file aside."""
    try:
        ds = DocStore(path, vector_dtype=vector_dtype)
        problem = ds.damaged()
        if not problem:
            return ds
        ds.close()
    except IndexStateError as exc:
        if "is damaged" not in str(exc):
            raise
        problem = str(exc)
    aside = move_aside(path)
    log.warning("the docstore was damaged (%s); moved it to %s and rebuilding from the documents", problem[:200], aside)
    return DocStore(path, vector_dtype=vector_dtype)


def _sync_folder(folder: str | Path, cfg: RagConfig, embedder: Embedder | None, directory: Path, rebuild: bool,
                 keep_deleted: bool | None, retry_failed: bool, wait: bool, progress: ProgressFn | None) -> IngestReport:
    started = time.perf_counter()
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise RagError(f"knowledge folder {folder} does not exist; create it and put documents in it")
    directory.mkdir(parents=True, exist_ok=True)
    keep = cfg.index.keep_deleted if keep_deleted is None else keep_deleted
    report = IngestReport(str(directory), embedder.name if embedder is not None else "none (BM25 only)")
    with writer_lock(directory, wait), ExitStack() as stack:
        if rebuild:
            ds = _open_for_rebuild(directory / DOCSTORE, cfg.store.vector_dtype)
        else:
            ds = DocStore(directory / DOCSTORE, vector_dtype=cfg.store.vector_dtype)
        stack.callback(ds.close)
        resplit = _prepare(ds, cfg, embedder, directory, rebuild)
        start_generation = ds.generation
        state = _Sync(ds, cfg, embedder, report, progress, single_transaction=rebuild)
        if not resplit and ds.get_meta("bm25_tokenizer") != BM25_TOKENIZER:
            with state.tx():  # another BM25 tokenizer made the stored tokens: re-make them (chunks, vectors stay)
                store_current_tokens(ds)
        if rebuild:
            stack.enter_context(ds.transaction())
            ds.conn.execute("DELETE FROM chunks")
            ds.conn.execute("DELETE FROM vectors")
            ds.conn.execute("DELETE FROM files")
        known = ds.files()
        paths = discover_files(folder, cfg.load, exclude=[directory])
        todo: list[tuple[Path, str, FileRecord]] = []
        seen: set[str] = set()
        for done, path in enumerate(paths, 1):
            source = path.relative_to(folder).as_posix()
            seen.add(source)
            try:  # the file may have gone (or been swapped) since discovery: report it, never crash the ingest
                stat = path.stat()
                sha = file_sha256(path, folder)
            except OSError as exc:
                report.files.append(FileReport(source, "failed", error_kind="unreadable", error=f"cannot read: {exc}"))
                continue
            record = FileRecord(source, sha, stat.st_size, stat.st_mtime_ns, "ok")
            old = None if rebuild else known.get(source)
            progress and progress("hash", done, len(paths))
            row = None if resplit else _unchanged_row(source, sha, old, retry_failed)
            if row is not None and old is not None:
                if old.status == "kept":
                    with state.tx():
                        ds.put_file(FileRecord(**{**asdict(old), "status": "ok"}))
                report.files.append(row)
            else:
                todo.append((path, source, record))

        _remove_deleted(state, known, seen, keep, rebuild)
        _parse_and_index(state, todo, known, rebuild, folder)
        state.flush()
        if state.changed or resplit:
            with state.tx():
                ds.set_meta("format_version", str(FORMAT_VERSION))
                ds.set_json("embedder", embedder.describe() if embedder is not None else None)
                ds.set_json("split", asdict(cfg.split))
                ds.set_meta("bm25_tokenizer", BM25_TOKENIZER)
        if ds.get_json(EMBED_REQUEST) != embed_request(cfg):  # lets the next run skip loading the embedder
            ds.set_json(EMBED_REQUEST, embed_request(cfg))  # one autocommitted row: no new generation
        stack.close()  # commits the rebuild transaction, if any
        ds = DocStore(directory / DOCSTORE, vector_dtype=cfg.store.vector_dtype)
        try:
            if embedder is not None:
                write_store(ds, cfg, directory, embedder.dim, state.removed_ids, state.added_ids, state.added_vectors,
                            start_generation, rebuild)
            write_manifest(directory, ds, cfg)
            report.generation = ds.generation
        finally:
            ds.close()
    report.chunks_indexed = state.indexed
    report.seconds = time.perf_counter() - started
    report.files.sort(key=lambda f: f.source)
    return report


def _remove_deleted(state: _Sync, known: dict[str, FileRecord], seen: set[str], keep: bool, rebuild: bool) -> None:
    gone = [s for s in known if s not in seen]
    if not gone or rebuild:
        return
    with state.tx():
        for source in gone:
            old = known[source]
            if keep:
                state.ds.put_file(FileRecord(**{**asdict(old), "status": "kept"}))
                state.report.files.append(FileReport(source, "kept", chunks=old.chunks, pages=old.pages))
            else:
                state.removed_ids.extend(state.ds.delete_file(source))
                state.report.files.append(FileReport(source, "deleted", chunks=old.chunks, pages=old.pages))


def _parse_and_index(state: _Sync, todo: list[tuple[Path, str, FileRecord]], known: dict[str, FileRecord],
                     rebuild: bool, folder: Path) -> None:
    records = {source: record for _, source, record in todo}
    flush_at = max(1, state.cfg.embed.batch_size) * 32  # chunks per embed call and per commit
    done = 0
    for parsed in parse_files([(path, source) for path, source, _ in todo], state.cfg.load, root=folder):
        done += 1
        state.progress("parse", done, len(todo))
        state.report.pages_parsed += parsed.pages
        record = records[parsed.source]
        # the file may have changed since it was hashed: record the hash of the bytes parsed, or none when they could
        # not be read (then the next ingest tries again instead of calling the file unchanged)
        if (parsed.sha256 or parsed.error_kind == "unreadable") and parsed.sha256 != record.sha256:
            record = FileRecord(**{**asdict(record), "sha256": parsed.sha256})
        old = None if rebuild else known.get(parsed.source)
        chunks = split_documents(list(parsed.documents), state.cfg.split, record.sha256) if parsed.ok else []
        if parsed.ok and not chunks and parsed.documents:  # no Documents at all: an image without text, 0 chunks
            parsed = ParsedFile(parsed.source, (), "empty", "no text to index after splitting", parsed.seconds, 0)
        if not parsed.ok:
            _record_failure(state, parsed, record, old)
            continue
        status = "updated" if old is not None else "new"
        full = FileRecord(**{**asdict(record), "pages": parsed.pages, "chunks": len(chunks), "seconds": parsed.seconds})
        state.pending.append(_Pending(parsed.source, full, chunks, [embedding_text(c) for c in chunks]))
        state.report.files.append(FileReport(parsed.source, status, len(chunks), parsed.pages, parsed.seconds))
        if sum(len(p.chunks) for p in state.pending) >= flush_at:
            state.flush()


def _record_failure(state: _Sync, parsed: ParsedFile, record: FileRecord, old: FileRecord | None) -> None:
    """A file that fails keeps its previous version's chunks (nothing is lost); the report says so."""
    kept = old.chunks if old is not None else 0
    error = parsed.error + (f"; the previous version's {kept} chunks are kept" if kept else "")
    failed = FileRecord(**{**asdict(record), "status": "failed", "error_kind": parsed.error_kind, "error": error,
                           "chunks": kept, "seconds": parsed.seconds})
    with state.tx():
        state.ds.put_file(failed)
    status = "skipped" if parsed.error_kind == "unsupported" else "failed"
    state.report.files.append(FileReport(parsed.source, status, kept, 0, parsed.seconds, parsed.error_kind, error))
