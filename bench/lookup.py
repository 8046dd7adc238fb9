"""Anchor lookup: HNSW (our AnchorIndex) vs exact numpy search over 384-d embeddings."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np

from bench.report import Section
from bench.timing import percentile
from mta.index import AnchorIndex, default_threads, ef_for_size
from mta.index_calibration import EF_LADDER

DIM = 384
TOP_K = 2
# Gaussian clusters: a few hundred centres, points at cosine ~0.8 to their centre (like
# embeddings of one topic), so neighbours are much closer than in the isotropic set.
CENTRES = 300
SPREAD = 0.75
NAN = float("nan")
EXACT_TIMED = 300


def _unit(rows: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _clustered(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = _unit(CENTRES, seed=seed + 7)
    noise = rng.standard_normal((rows, DIM)).astype(np.float32) * (SPREAD / np.sqrt(DIM))
    vectors = centres[rng.integers(0, CENTRES, rows)] + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


DATASETS: dict[str, Callable[[int, int], np.ndarray]] = {
    "isotropic": _unit,
    "clustered": _clustered,
}


def _queries(vectors: np.ndarray, n_queries: int) -> np.ndarray:
    """Queries near stored anchors, as real users sit near some cluster."""
    rng = np.random.default_rng(1)
    picks = vectors[rng.integers(0, len(vectors), n_queries)]
    queries = picks + 0.5 * _unit(n_queries, seed=2) / np.sqrt(DIM) * 8
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _latencies(
    fn: Callable[[np.ndarray], list[int]], queries: np.ndarray
) -> tuple[list[float], list[list[int]]]:
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - start) * 1e3)
    return times, results


def _exact(vectors: np.ndarray, q: np.ndarray) -> list[int]:
    scores = vectors @ q
    top = np.argpartition(-scores, TOP_K)[:TOP_K]
    return [int(i) for i in top[np.argsort(-scores[top])]]


def _truth(vectors: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    """Exact top-k of every query, in blocks of matrix products (the timing is separate)."""
    truth: list[set[int]] = []
    for block in range(0, len(queries), 100):
        scores = queries[block : block + 100] @ vectors.T
        truth.extend(
            set(row.tolist()) for row in np.argpartition(-scores, TOP_K, axis=1)[:, :TOP_K]
        )
    return truth


def _hnsw(index: AnchorIndex, q: np.ndarray) -> list[int]:
    return [int(anchor) for anchor, _ in index.query(q, TOP_K)]


def _build(vectors: np.ndarray, threads: int) -> tuple[AnchorIndex, float]:
    """An uncalibrated build (calibration is timed on its own) and its seconds."""
    start = time.perf_counter()
    index = AnchorIndex.build(
        [str(i) for i in range(len(vectors))], vectors, num_threads=threads, calibrate=False
    )
    return index, time.perf_counter() - start


def _builds(section: Section, name: str, vectors: np.ndarray, one_thread: bool) -> AnchorIndex:
    """All-core build then calibration (rows for both), and a one-thread build to compare."""
    size, threads = len(vectors), default_threads()
    index, build_s = _build(vectors, threads)
    calibration = index.calibrate()
    cal = f"calibration ({calibration.sample} queries, recall@{calibration.k} "
    cal += f"{calibration.recall:.4f})"
    if one_thread:
        # Same data and parameters on one thread; the ratio is the all-core speed-up.
        single_s = _build(vectors, 1)[1]
        section.add(name, size, "HNSW build, 1 thread", "", single_s, NAN, NAN, NAN, 1.0)
        ratio = single_s / build_s
        section.add(name, size, f"HNSW build, {threads} threads", "", build_s, *[NAN] * 3, ratio)
    else:
        section.add(name, size, f"HNSW build, {threads} threads", "", build_s, *[NAN] * 4)
    share = calibration.seconds / build_s
    section.add(name, size, cal, calibration.ef, calibration.seconds, *[NAN] * 3, share)
    return index


def _measure(
    section: Section, name: str, size: int, n_queries: int, ladder: list[int], *, one_thread: bool
) -> None:
    """Rows for one dataset and size: builds, calibration, the ef curve, the exact baseline."""
    vectors = DATASETS[name](size, size)
    queries = _queries(vectors, n_queries)
    index = _builds(section, name, vectors, one_thread)
    truth = _truth(vectors, queries)
    # Exact search costs ~0.2 s a query on a loaded 100k set: time a share of the queries.
    t_exact, _ = _latencies(partial(_exact, vectors), queries[:EXACT_TIMED])
    exact_p50 = percentile(t_exact, 50)
    calibrated, by_size = index.ef, ef_for_size(size)
    for ef in sorted({*ladder, calibrated}):
        index.ef_search = ef
        t_hnsw, found = _latencies(partial(_hnsw, index), queries)
        pairs = zip(truth, found, strict=True)
        recall = float(np.mean([len(exact & set(got)) / TOP_K for exact, got in pairs]))
        tags = ["calibrated"] * (ef == calibrated) + ["size table"] * (ef == by_size)
        label = f"{ef} ({', '.join(tags)})" if tags else str(ef)
        p50 = percentile(t_hnsw, 50)
        section.add(
            name, size, "HNSW", label, NAN, p50, percentile(t_hnsw, 99), recall, exact_p50 / p50
        )
    exact_p99 = percentile(t_exact, 99)
    section.add(name, size, "exact numpy", "", 0.0, exact_p50, exact_p99, 1.0, 1.0)


def bench_lookup(quick: bool) -> Section:
    """recall@2 and p50/p99 of HNSW over the ef ladder vs brute force; build and calibration."""
    section = Section(
        "Anchor lookup (384-d, top-2)",
        ["data", "anchors", "method", "ef", "build s", "p50 ms", "p99 ms", "recall@2", "ratio"],
    )
    large = 10_000 if quick else 100_000
    n_queries = 200 if quick else 1_000
    ladder = [32, 128, 512, 2048] if quick else list(EF_LADDER)
    _measure(section, "isotropic", 1_000, n_queries, [], one_thread=False)
    for name in DATASETS:
        _measure(section, name, large, n_queries, ladder, one_thread=True)
    section.notes.append(
        f"{n_queries} queries per set, each a stored vector plus noise (cosine ~0.98 to it), so "
        "recall@2 hinges on finding the runner-up. Isotropic: random unit vectors, the hardest "
        f"case for HNSW; clustered: {CENTRES} Gaussian clusters, cosine ~0.8 to their centre. "
        f"Exact search is timed on the first {EXACT_TIMED} queries (it is also the truth for all)."
    )
    section.notes.append(
        "HNSW uses the AnchorIndex defaults (M, ef_construction); `build s` is a build without "
        "calibration, the `calibration` row its own seconds and the ef it chose (the default "
        "for queries), with the sampled recall it reached. ef is then swept on the same graph; "
        "`(calibrated)` marks the chosen rung, `(size table)` the ef used without calibration. "
        "`ratio`: exact p50 / HNSW p50 on query rows, one-thread build s / all-core build s on "
        "build rows (same data, same run), calibration s / all-core build s on calibration rows."
    )
    section.notes.append(
        "Exact search is one matrix-vector product + argpartition; HNSW latency includes the "
        "Python wrapper and the index lock."
    )
    return section
