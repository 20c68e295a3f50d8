"""Approximate vs exact retrieval of the recall step (pecrs.retrieval) on a synthetic catalog.

    python benchmarks/ann.py                       # 10^6 random unit vectors of width 576, top-700
    python benchmarks/ann.py --n 100000 --k-factor 4 --data clustered

The catalog is `--n` random unit vectors of width `--d` (576 = SmolLM2-135M's hidden size); the
queries are independent random unit vectors (`--data uniform`, the hardest case: no structure to
exploit) or, with `--data clustered`, points drawn around random centres and queries near catalog
items (closer to real item vectors). For each query the true top `--k` (700 = the paper's
M_inference) comes from `ExactIndex`; the faiss index (`FaissIndex`) is scored by its recall of that
set. Times are per query: "batch" runs all queries in one call (as `pecrs evaluate` does), "single"
one query per call (as a server does). Prints one JSON object, then a one-line summary.
Targets: recall >= 0.95 and <= 20 ms/query.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pecrs.retrieval import ExactIndex, FaissIndex  # noqa: E402

TARGET_RECALL, TARGET_MS = 0.95, 20.0


def unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(n: int, d: int, n_queries: int, kind: str, seed: int, chunk: int = 100_000):
    """Catalog [n, d] and queries [q, d], unit rows, float32, generated in chunks (bounded memory)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    if kind == "uniform":
        for s in range(0, n, chunk):
            x[s:s + chunk] = unit_rows(rng.standard_normal((min(chunk, n - s), d), dtype=np.float32))
        q = unit_rows(rng.standard_normal((n_queries, d), dtype=np.float32))
    else:  # clustered: n/1000 random centres, points at angle ~45 degrees around them
        centres = unit_rows(rng.standard_normal((max(1, n // 1000), d), dtype=np.float32))
        noise = 1.0 / np.sqrt(d)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            pts = centres[rng.integers(0, len(centres), m)]
            x[s:s + m] = unit_rows(pts + noise * rng.standard_normal((m, d), dtype=np.float32))
        picks = x[rng.integers(0, n, n_queries)]
        q = unit_rows(picks + noise * rng.standard_normal(picks.shape, dtype=np.float32))
    return torch.from_numpy(x), torch.from_numpy(q)


def per_query_ms(index, queries: torch.Tensor, k: int, singles: int) -> dict:
    """Wall-clock and CPU ms per query, with all queries in one call ("batch") and one query per
    call ("single", median), plus the indices found for the batch. CPU time is what a query costs
    when the machine is shared (it excludes waiting for a core; the search is single-threaded
    with --threads 1)."""
    wall, cpu = time.perf_counter(), time.process_time()
    _, found = index.search(queries, k)
    out = {"batch": (time.perf_counter() - wall) * 1000 / len(queries),
           "batch_cpu": (time.process_time() - cpu) * 1000 / len(queries), "found": found}
    walls, cpus = [], []
    for i in range(min(singles, len(queries))):
        wall, cpu = time.perf_counter(), time.process_time()
        index.search(queries[i:i + 1], k)
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    out["single"] = statistics.median(walls) if walls else float("nan")
    out["single_cpu"] = statistics.median(cpus) if cpus else float("nan")
    return out


def recall(truth: torch.Tensor, found: torch.Tensor) -> float:
    hits = [len(set(t.tolist()) & set(f.tolist())) / truth.shape[1] for t, f in zip(truth, found)]
    return float(np.mean(hits))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="catalog size")
    p.add_argument("--d", type=int, default=576, help="vector width (SmolLM2-135M: 576)")
    p.add_argument("--k", type=int, default=700, help="items retrieved per query (M_inference)")
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--singles", type=int, default=16, help="one-query calls timed")
    p.add_argument("--data", choices=("uniform", "clustered"), default="uniform")
    p.add_argument("--factory", default=None, help="faiss index_factory string (default PQ{d/2}x4fs)")
    p.add_argument("--k-factor", type=int, default=8, help="candidates re-scored exactly per result")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and faiss threads (1: on a shared 2-core machine a second OpenMP "
                        "thread spin-waits and was slower)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    catalog, queries = make_data(args.n, args.d, args.queries, args.data, args.seed)
    gen_s = time.perf_counter() - started

    exact = ExactIndex(catalog)
    ex = per_query_ms(exact, queries, args.k, min(args.singles, 4))
    truth = ex["found"]
    del exact

    started = time.perf_counter()
    ann = FaissIndex(catalog, factory=args.factory, k_factor=args.k_factor, seed=args.seed)
    build_s = time.perf_counter() - started
    an = per_query_ms(ann, queries, args.k, args.singles)
    result = {
        "n": args.n, "d": args.d, "k": args.k, "queries": args.queries, "data": args.data,
        "index": ann.factory + " + exact re-scoring", "k_factor": args.k_factor, "threads": args.threads,
        "recall": round(recall(truth, an["found"]), 4),
        **{f"{name}_ms_per_query_{key}": round(m[key], 2) for name, m in (("ann", an), ("exact", ex))
           for key in ("batch", "single", "batch_cpu", "single_cpu")},
        "build_s": round(build_s, 1), "generate_data_s": round(gen_s, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s) of {_cpus()} CPUs",
        "load_average": round(os.getloadavg()[0], 2),
        "targets": {"recall": TARGET_RECALL, "ms_per_query": TARGET_MS},
    }
    result["meets_targets"] = bool(result["recall"] >= TARGET_RECALL and max(an["batch"], an["single"]) <= TARGET_MS)
    print(json.dumps(result))
    print(f"ann n={args.n} d={args.d} k={args.k} {args.data}: {ann.factory}+refine x{args.k_factor} "
          f"recall@{args.k} {result['recall']:.3f}, ms/query wall {an['batch']:.1f} batched / {an['single']:.1f} "
          f"single (cpu {an['batch_cpu']:.1f} / {an['single_cpu']:.1f}); exact {ex['batch']:.1f} / {ex['single']:.1f}; "
          f"build {build_s:.0f} s, peak {result['peak_rss_gb']} GB, load {result['load_average']} -> "
          f"{'meets' if result['meets_targets'] else 'misses'} targets (>= {TARGET_RECALL} recall, "
          f"<= {TARGET_MS:.0f} ms wall)")
    return result


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
