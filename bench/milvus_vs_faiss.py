"""FAISS (flat and the ``auto`` kind) vs Milvus (milvus-lite) through the project's own stores, on the same vectors.

Data: the clustered, L2-normalised vectors of ``bench/retrieval.py`` (centroids + a low-dimensional subspace per
cluster + noise); queries are held-out points of the same clusters. The exact FAISS flat store gives the ground truth
for recall@10, in the same run.

One JSON line per store: {index, n, dim, build_s, p50_ms, p99_ms, recall@10, ...}; latency is one query per call
(batch 1, k=10), excluding query embedding; for Milvus it includes the gRPC round trip to the in-process milvus-lite
server, which is what the app pays. ``build_s`` for Milvus = insert (in 2,000-row batches, as ``rag.cli.migrate`` does) +
flush (seals segments and builds the index). The last line is a summary.

    nice -n 10 .venv/bin/python bench/milvus_vs_faiss.py --n 100000           # ~5 min on 2 cores
    .venv/bin/python bench/milvus_vs_faiss.py --n 2000 --dim 32 --queries 30   # smoke run, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval import clustered, emit, latencies_ms, recall_at  # the house generator and timing loop

from rag.core.config import StoreConfig
from rag.store.faiss import FaissStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors in the corpus")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--subspace-dim", type=int, default=32)
    parser.add_argument("--queries", type=int, default=300, help="held-out queries (batch 1 each)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--milvus-indexes", default="HNSW,IVF_FLAT", help="comma list of HNSW, IVF_FLAT, FLAT")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.out, "a", encoding="utf-8")) if args.out else None
        return run_bench(args, out)


def measure(name: str, store: Any, build_s: float, queries: np.ndarray, truth: np.ndarray, k: int,
            common: dict[str, Any], extra: dict[str, Any], out: Any) -> dict[str, Any]:
    store.search(queries[:1], k)  # warm-up: first-call costs (lazy loads, gRPC channel) are not per-query latency
    times, found = latencies_ms(store, queries, k)
    row = {"index": name, **common, **extra, "build_s": round(build_s, 2),
           "p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3),
           "recall@10": round(recall_at(found, truth), 4)}
    emit(row, out)
    return row


def run_bench(args: argparse.Namespace, out: Any) -> int:
    import faiss

    common = {"n": args.n, "dim": args.dim, "k": args.k, "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    base = clustered(args.n, args.dim, args.clusters, args.subspace_dim, seed=1000)
    queries = clustered(args.queries, args.dim, args.clusters, args.subspace_dim, seed=1001)
    ids = np.arange(args.n, dtype=np.int64) * 7 + 3  # sparse ids, like chunk ids
    emit({"stage": "data", **common, "clusters": args.clusters, "subspace_dim": args.subspace_dim,
          "omp_threads": faiss.omp_get_max_threads(), "seconds": round(time.perf_counter() - t0, 1)}, out)
    rows: list[dict[str, Any]] = []

    t0 = time.perf_counter()
    flat = FaissStore.build(args.dim, StoreConfig(faiss_index="flat"), ids, base)
    build = time.perf_counter() - t0
    _, truth = flat.search(queries, args.k)  # batched exact search: the ground truth
    rows.append(measure("faiss_flat", flat, build, queries, truth, args.k, common, {}, out))
    del flat

    auto_cfg = StoreConfig()  # the shipped default: faiss_index auto
    for name, cfg in (("faiss_auto", auto_cfg), ("faiss_auto_large", replace(auto_cfg, faiss_index=auto_cfg.auto_large))):
        t0 = time.perf_counter()
        store = FaissStore.build(args.dim, cfg, ids, base)
        build = time.perf_counter() - t0
        rows.append(measure(name, store, build, queries, truth, args.k, common, {"kind": store.kind}, out))
        del store

    from rag.store.milvus import MilvusStore

    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as tmp:
        for index_type in [t for t in args.milvus_indexes.split(",") if t]:
            cfg = StoreConfig(kind="milvus", uri="bench.db", collection=f"bench_{index_type.lower()}",
                              milvus_index=index_type)
            t0 = time.perf_counter()
            store = MilvusStore.connect(cfg, Path(tmp), args.dim, create=True)
            store.add(ids, base)
            store.save()  # flush: seal the segments and build their index
            build = time.perf_counter() - t0
            settings = ({"M": cfg.hnsw_m, "ef_construction": cfg.hnsw_ef_construction, "ef": cfg.hnsw_ef_search}
                        if index_type == "HNSW" else {"nlist": cfg.ivf_nlist or 128, "nprobe": cfg.ivf_nprobe}
                        if index_type == "IVF_FLAT" else {})
            rows.append(measure(f"milvus_lite_{index_type.lower()}", store, build, queries, truth, args.k, common,
                                {"index_type": store.index_type, **settings}, out))
            store.close()

    by_name = {r["index"]: r for r in rows}
    flat_p50 = by_name["faiss_flat"]["p50_ms"]
    emit({"stage": "summary", **common,
          "p50_ms": {r["index"]: r["p50_ms"] for r in rows},
          "recall@10": {r["index"]: r["recall@10"] for r in rows},
          "build_s": {r["index"]: r["build_s"] for r in rows},
          "p50_vs_faiss_flat": {r["index"]: round(r["p50_ms"] / flat_p50, 1) for r in rows if flat_p50 > 0}}, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
