"""Anchor lookup: HNSW (our AnchorIndex) vs exact numpy search over 384-d embeddings."""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from bench.report import Section
from bench.timing import percentile
from mta.index import AnchorIndex

DIM = 384
TOP_K = 2


def _unit(rows: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _latencies(fn, queries: np.ndarray) -> tuple[list[float], list]:
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - start) * 1e3)
    return times, results


def _exact(vectors: np.ndarray, ids: list[str], q: np.ndarray) -> list[str]:
    scores = vectors @ q
    top = np.argpartition(-scores, TOP_K)[:TOP_K]
    return [ids[i] for i in top[np.argsort(-scores[top])]]


def _hnsw(index: AnchorIndex, q: np.ndarray) -> list[str]:
    return [anchor for anchor, _ in index.query(q, TOP_K)]


def bench_lookup(quick: bool) -> Section:
    """p50/p99 query latency and recall@2 of HNSW vs brute force at 1k and 100k anchors."""
    section = Section(
        "Anchor lookup (384-d, top-2)",
        ["anchors", "method", "build s", "p50 ms", "p99 ms", "recall@2", "exact p50 / HNSW p50"],
    )
    sizes = [1_000, 20_000] if quick else [1_000, 100_000]
    n_queries = 200 if quick else 1_000
    for size in sizes:
        vectors = _unit(size, seed=size)
        # Queries near stored anchors, as real users sit near some cluster.
        rng = np.random.default_rng(1)
        picks = vectors[rng.integers(0, size, n_queries)]
        queries = picks + 0.5 * _unit(n_queries, seed=2) / np.sqrt(DIM) * 8
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        ids = [f"a{i}" for i in range(size)]
        start = time.perf_counter()
        index = AnchorIndex.build(ids, vectors)
        build_s = time.perf_counter() - start

        t_exact, truth = _latencies(partial(_exact, vectors, ids), queries)
        t_hnsw, found = _latencies(partial(_hnsw, index), queries)
        recall = np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(truth, found, strict=True)])
        ratio = percentile(t_exact, 50) / percentile(t_hnsw, 50)
        section.add(
            size,
            "HNSW",
            build_s,
            percentile(t_hnsw, 50),
            percentile(t_hnsw, 99),
            float(recall),
            ratio,
        )
        section.add(
            size, "exact numpy", 0.0, percentile(t_exact, 50), percentile(t_exact, 99), 1.0, 1.0
        )
    section.notes.append(
        f"{n_queries} queries per size; HNSW parameters are AnchorIndex defaults. Exact search is "
        "one matrix-vector product + argpartition; HNSW latency includes the Python wrapper."
    )
    return section
