"""Move an index's vectors from FAISS to a Milvus collection, then serve the folder from it (no re-embedding).

    python -m rag.migrate --from faiss:DIR --to milvus:URI [--collection NAME] [--overwrite] [--index-type HNSW]

URI is a milvus-lite file ending in .db (relative to the current folder) or a server, e.g. http://localhost:19530.
The vectors come from the index's SQLite docstore (the truth; a quantised FAISS file would lose precision), with each
row's file source and sha256. Afterwards ``DIR/store.json`` names the collection: every reader and ingest of DIR uses
it, whatever store.kind their config says. To go back to FAISS, delete ``DIR/store.json`` (the FAISS file is rebuilt
from SQLite on the next open).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rag.core.config import RagConfig, StoreConfig, load_config
from rag.core.errors import ConfigError, IndexStateError
from rag.index.docstore import DocStore
from rag.index.layout import DOCSTORE, read_manifest, write_manifest
from rag.index.milvus_sync import fill, write_binding
from rag.index.sync import writer_lock
from rag.store.milvus import MilvusStore, is_server_uri


@dataclass
class Migration:
    """What :func:`migrate_to_milvus` did."""

    index_dir: str
    uri: str
    collection: str
    vectors: int
    dim: int
    index_type: str
    seconds: float

    def summary(self) -> str:
        return (f"migrated {self.vectors} vectors (dim {self.dim}) from {self.index_dir} to Milvus collection "
                f"{self.collection!r} at {self.uri} ({self.index_type}, IP) in {self.seconds:.1f} s; the index is now "
                f"served from Milvus ({self.index_dir}/store.json; delete it to go back to FAISS)")


def parse_target(text: str, scheme: str, example: str) -> str:
    """``scheme:VALUE`` -> VALUE, or a ConfigError naming the expected form."""
    prefix = scheme + ":"
    if not text.startswith(prefix) or len(text) == len(prefix):
        raise ConfigError(f"{text!r} is not {scheme}:... ; expected e.g. {example}")
    return text[len(prefix):]


def binding_uri(uri: str, directory: Path) -> str:
    """The uri to record for ``directory``: a server as given; a milvus-lite file relative to the index folder when it
    lies inside it (the folder can move), else absolute (the CLI's relative paths mean the current folder)."""
    if is_server_uri(uri):
        return uri
    path = Path(uri).expanduser().resolve()
    return os.path.relpath(path, directory) if path.is_relative_to(directory) else str(path)


def migrate_to_milvus(index_dir: str | Path, uri: str, collection: str = "", overwrite: bool = False,
                      index_type: str = "", base: StoreConfig | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Migration:
    """Copy the docstore's vectors of ``index_dir`` into a Milvus collection and bind the folder to it.

    Args:
        index_dir: an index folder built by ``ingest.py`` (FAISS).
        uri: milvus-lite ``.db`` path (relative to the current folder) or a server address.
        collection: the collection name (default ``kbqa_<folder name>``).
        overwrite: replace an existing collection of that name.
        index_type: HNSW | IVF_FLAT | FLAT (default ``store.milvus_index``).
        base: the other store settings (HNSW / IVF parameters); default the default config's.
        progress: called as (vectors done, total) after each batch.

    Raises:
        IndexStateError: no index there, a BM25-only index, an ingest running, Milvus unreachable, the collection
            exists (without ``overwrite``) or holds another dimension.
    """
    started = time.perf_counter()
    directory = Path(index_dir).resolve()
    manifest = read_manifest(directory)
    info = manifest.get("embedder")
    if info is None:
        raise IndexStateError(f"index {directory} has no vectors (it was built BM25-only); nothing to move to Milvus")
    dim = int(info["dim"])
    base = base or StoreConfig()
    cfg = replace(base, kind="milvus", uri=binding_uri(uri, directory), collection=collection,
                  milvus_index=index_type or base.milvus_index)
    with writer_lock(directory, wait=False):
        ds = DocStore(directory / DOCSTORE)
        try:
            with ds.snapshot():
                ids, vectors = ds.all_vectors(dim)
                generation = ds.generation
            store = MilvusStore.connect(cfg, directory, dim, create=True, recreate=overwrite, exist_ok=False)
            try:
                done = 0

                def advance(n: int) -> None:
                    nonlocal done
                    done += n
                    if progress is not None:
                        progress(done, len(ids))

                fill(store, ds, ids, vectors, advance)
                store.save()
                if len(store) != len(ids):
                    raise IndexStateError(f"Milvus collection {store.collection!r} holds {len(store)} vectors after "
                                          f"the copy, the index {len(ids)}; run the migration again with --overwrite")
                store.set_state(generation, info.get("fingerprint", ""), directory)
                write_binding(directory, cfg)
                write_manifest(directory, ds, replace(RagConfig(), store=cfg))
                return Migration(str(directory), store.uri, store.collection, len(ids), dim, store.index_type,
                                 time.perf_counter() - started)
            finally:
                store.close()
        finally:
            ds.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag.migrate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, metavar="faiss:DIR", help="the index folder")
    parser.add_argument("--to", dest="target", required=True, metavar="milvus:URI",
                        help="milvus:indexes/default/milvus.db (milvus-lite) or milvus:http://localhost:19530")
    parser.add_argument("--collection", default="", help="collection name (default kbqa_<index folder name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing collection of that name")
    parser.add_argument("--index-type", default="", choices=["", "HNSW", "IVF_FLAT", "FLAT"],
                        help="Milvus index (default store.milvus_index from the config: HNSW)")
    parser.add_argument("--config", default=None, help="YAML config for the HNSW / IVF parameters")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, only the summary")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    index_dir = parse_target(args.source, "faiss", "--from faiss:indexes/default")
    uri = parse_target(args.target, "milvus", "--to milvus:http://localhost:19530")
    bar = None if args.quiet else tqdm(desc="vectors -> Milvus", unit="vec", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        result = migrate_to_milvus(index_dir, uri, collection=args.collection, overwrite=args.overwrite,
                                   index_type=args.index_type, base=load_config(args.config).store, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(result.summary())
    return 0


if __name__ == "__main__":
    from rag.cli.common import run_cli

    sys.exit(run_cli(main, parse_args()))
