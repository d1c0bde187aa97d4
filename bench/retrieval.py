"""Retrieval latency, recall and memory of the FAISS kinds, through the project's ``rag.store.faiss.FaissStore``.

Data: ``--clusters`` gaussian centroids (L2-normalised) in ``--dim`` dimensions; each cluster spreads along its own
random ``--subspace-dim``-dimensional subspace plus isotropic noise (real text embeddings have a low intrinsic
dimension; ``--subspace-dim 0`` gives isotropic noise only, the hardest case for any ANN index); every point is
L2-normalised. Queries are held-out points drawn the same way. The exact flat store is the baseline, in the same
run: it gives the ground truth for recall@10 and its own latency.

One JSON line per (index, search setting): {index, n, build_s, p50_ms, p99_ms, recall@10, disk_bytes_per_chunk,
ram_bytes_per_chunk, ...}; latency is one query per call (batch 1), excluding query embedding, with FAISS's OpenMP
threads as the machine has. Bytes per chunk = the FAISS file + the vector's row in SQLite (measured on a sample
written through ``rag.index.docstore.DocStore``, float16 unless ``--vector-dtype float32``). The last line is a summary.

    .venv/bin/python bench/retrieval.py --size 100000                 # CPU CI size, ~3 min on 2 cores
    .venv/bin/python bench/retrieval.py --size 1000000 --deadline-s 2400
    .venv/bin/python bench/retrieval.py --size 2000 --queries 50 --small   # smoke run, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.core.config import StoreConfig
from rag.index.docstore import DocStore
from rag.store.faiss import FaissStore

START = time.perf_counter()

# (kind, build settings, search settings to sweep). IVF nlist 0 = one list per ~1,000 vectors.
FULL_PLAN: list[tuple[str, dict[str, int], list[dict[str, int]]]] = [
    ("ivf_sq8", {"ivf_nlist": 0}, [{"ivf_nprobe": p} for p in (8, 16, 32, 64)]),
    ("hnsw_sq8", {"hnsw_m": 16, "hnsw_ef_construction": 40}, [{"hnsw_ef_search": e} for e in (64, 128, 256)]),
    ("ivf", {"ivf_nlist": 0}, [{"ivf_nprobe": p} for p in (16, 32)]),
    ("hnsw", {"hnsw_m": 32, "hnsw_ef_construction": 40}, [{"hnsw_ef_search": e} for e in (64, 128, 256)]),
]


def emit(record: dict[str, Any], out: Any) -> None:
    record = {**record, "elapsed_s": round(time.perf_counter() - START, 1)}
    line = json.dumps(record, ensure_ascii=False)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def clustered(n: int, dim: int, clusters: int, subspace_dim: int, seed: int, *, spread: float = 0.5,
              noise: float = 0.25) -> np.ndarray:
    """[n, dim] float32 unit vectors: centroid + spread * (cluster subspace) + noise * isotropic, normalised.

    The centroids and subspaces depend on ``seed // 1000`` only, so the base set and the queries share them."""
    structure = np.random.default_rng(seed // 1000)
    centroids = structure.standard_normal((clusters, dim), dtype=np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    bases = (structure.standard_normal((clusters, max(subspace_dim, 1), dim), dtype=np.float32) / np.sqrt(dim)
             if subspace_dim else None)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):  # in blocks: 1M x 768 of temporaries would double the peak memory
        stop = min(n, start + 65536)
        labels = rng.integers(0, clusters, stop - start)
        block = centroids[labels] + noise * rng.standard_normal((stop - start, dim), dtype=np.float32) / np.sqrt(dim)
        if bases is not None:
            z = rng.standard_normal((stop - start, subspace_dim), dtype=np.float32)
            z *= np.float32(spread / np.sqrt(subspace_dim))  # the subspace part has norm ~spread
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(clusters + 1))
            for label in np.flatnonzero(np.diff(bounds)):  # one small GEMM per cluster present in the block
                rows = order[bounds[label]:bounds[label + 1]]
                block[rows] += z[rows] @ bases[label]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sqlite_bytes_per_vector(dim: int, vector_dtype: str, sample: int, folder: Path) -> float:
    """Bytes per vector of the ``vectors`` table, written through DocStore (file size / rows after a checkpoint)."""
    path = folder / f"vectors-{vector_dtype}.sqlite"
    ds = DocStore(path, vector_dtype=vector_dtype)
    empty = path.stat().st_size
    vectors = clustered(sample, dim, 16, 0, seed=999_000)
    with ds.transaction():
        ds.put_vectors(list(range(sample)), vectors)
    ds.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ds.close()
    return (path.stat().st_size - empty) / sample


def latencies_ms(store: FaissStore, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query wall time (batch 1) and the ids found."""
    times = np.empty(len(queries))
    found = np.empty((len(queries), k), dtype=np.int64)
    for i, query in enumerate(queries):
        t0 = time.perf_counter()
        _, ids = store.search(query[None, :], k)
        times[i] = (time.perf_counter() - t0) * 1000
        found[i] = ids[0]
    return times, found


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def build_with_deadline(dim: int, cfg: StoreConfig, ids: np.ndarray, vectors: np.ndarray,
                        deadline: float) -> tuple[FaissStore | None, float, float]:
    """Build (train + add in blocks); give up when the projected finish passes ``deadline``.

    Returns (store or None, seconds spent, projected seconds for the whole build)."""
    t0 = time.perf_counter()
    store = FaissStore.trained(dim, cfg, vectors)
    block = 50_000
    for start in range(0, len(ids), block):
        store.add(ids[start:start + block], vectors[start:start + block])
        spent = time.perf_counter() - t0
        done = min(len(ids), start + block)
        projected = spent / done * len(ids)
        if done < len(ids) and time.perf_counter() + (projected - spent) > deadline:
            return None, spent, projected
    return store, time.perf_counter() - t0, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="vectors in the corpus (100000 CI, 1000000 full)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--subspace-dim", type=int, default=32, help="intrinsic dimensions per cluster; 0 = isotropic")
    parser.add_argument("--queries", type=int, default=1000, help="held-out query points (flat latency uses 200)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--kinds", default="ivf_sq8,ivf,hnsw_sq8,hnsw", help="comma list; flat always runs")
    parser.add_argument("--vector-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--deadline-s", type=float, default=3000.0, help="skip builds projected to end later")
    parser.add_argument("--small", action="store_true", help="smoke run: few sweeps, tiny SQLite sample")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.out, "a", encoding="utf-8")) if args.out else None
        return run_bench(args, out)


def run_bench(args: argparse.Namespace, out: Any) -> int:
    import faiss

    deadline = START + args.deadline_s
    common = {"n": args.size, "dim": args.dim, "omp_threads": faiss.omp_get_max_threads(), "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    base = clustered(args.size, args.dim, args.clusters, args.subspace_dim, seed=1000)
    queries = clustered(args.queries, args.dim, args.clusters, args.subspace_dim, seed=1001)
    ids = np.arange(args.size, dtype=np.int64) * 7 + 3  # sparse ids, like chunk ids
    emit({"stage": "data", **common, "clusters": args.clusters, "subspace_dim": args.subspace_dim,
          "seconds": round(time.perf_counter() - t0, 1)}, out)

    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        folder = Path(tmp)
        sqlite_per = sqlite_bytes_per_vector(args.dim, args.vector_dtype, min(args.size, 2000 if args.small else 20000),
                                             folder)
        rows: list[dict[str, Any]] = []

        def measure(name: str, store: FaissStore, build_s: float, settings: dict[str, Any], truth: np.ndarray | None,
                    n_queries: int) -> tuple[dict[str, Any], np.ndarray]:
            path = folder / f"{name}.index"
            store.save(path)
            disk = path.stat().st_size
            before = rss_bytes()
            loaded = FaissStore.load(path, args.dim, store.cfg)
            ram = rss_bytes() - before
            loaded.apply_search_params(store.cfg)
            times, found = latencies_ms(loaded, queries[:n_queries], args.k)
            del loaded
            path.unlink()
            row = {"index": name, **common, **settings, "build_s": round(build_s, 1),
                   "p50_ms": round(float(np.percentile(times, 50)), 3),
                   "p99_ms": round(float(np.percentile(times, 99)), 3),
                   "recall@10": round(recall_at(found, truth[:n_queries]), 4) if truth is not None else 1.0,
                   "faiss_disk_bytes_per_chunk": round(disk / args.size, 1),
                   "sqlite_bytes_per_chunk": round(sqlite_per, 1),
                   "disk_bytes_per_chunk": round(disk / args.size + sqlite_per, 1),
                   "ram_bytes_per_chunk": round(ram / args.size, 1)}
            emit(row, out)
            rows.append(row)
            return row, found

        cfg_flat = StoreConfig(faiss_index="flat")
        t0 = time.perf_counter()
        flat = FaissStore.build(args.dim, cfg_flat, ids, base)
        build_flat = time.perf_counter() - t0
        _, truth = flat.search(queries, args.k)  # batched exact search: the ground truth
        measure("flat", flat, build_flat, {}, None, min(args.queries, 200))
        del flat

        plan = [p for p in FULL_PLAN if p[0] in args.kinds.split(",")]
        for kind, build_settings, sweep in plan:
            if args.small:
                sweep = sweep[:1]
            cfg = replace(StoreConfig(faiss_index=kind), **build_settings)
            if time.perf_counter() > deadline:
                emit({"index": kind, **common, **build_settings, "skipped": "deadline passed before the build"}, out)
                continue
            try:
                store, spent, projected = build_with_deadline(args.dim, cfg, ids, base, deadline)
            except MemoryError as exc:
                emit({"index": kind, **common, **build_settings, "error": f"MemoryError: {exc}"}, out)
                continue
            if store is None:
                emit({"index": kind, **common, **build_settings, "skipped": "build would pass the deadline",
                      "build_s_spent": round(spent, 1), "build_s_projected": round(projected, 1)}, out)
                continue
            nlist = {"ivf_nlist": store.index.nlist} if kind.startswith("ivf") else {}
            for search in sweep:
                store.apply_search_params(replace(cfg, **search))
                measure(kind, store, spent, {**build_settings, **nlist, **search}, truth, args.queries)
            del store

        auto = StoreConfig()
        emit({"stage": "summary", **common, "auto_policy": {"threshold": auto.auto_threshold, "large": auto.auto_large,
                                                            "kind_at_n": FaissStore.kind_for(auto, args.size)},
              "targets": {"p50_ms": 5.0, "recall@10": 0.95, "disk_bytes_per_chunk": 3584},
              "meets_targets": [{k: r[k] for k in r if k not in common and k != "elapsed_s"} for r in rows
                                if r["p50_ms"] < 5 and r["recall@10"] >= 0.95 and r["disk_bytes_per_chunk"] <= 3584],
              "vs_flat_p50": {f"{r['index']}:{r.get('ivf_nprobe', r.get('hnsw_ef_search', ''))}":
                              round(rows[0]["p50_ms"] / r["p50_ms"], 1) for r in rows[1:] if r["p50_ms"] > 0}}, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
