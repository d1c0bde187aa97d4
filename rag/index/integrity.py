"""Consistency check of an index folder (manifest, docstore, vectors, FAISS/Milvus ids); loads no model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag.core.config import RagConfig
from rag.core.errors import IndexStateError
from rag.core.types import chunk_id
from rag.index.docstore import DocStore
from rag.index.external import external_problems
from rag.index.layout import DOCSTORE, MANIFEST, faiss_path, read_manifest
from rag.index.milvus_sync import effective_config
from rag.store.faiss import FaissStore


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
