"""Pick an index's ef_search from its own vectors: the smallest ef whose sampled recall holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Powers of two: each rung roughly doubles the query cost, so climbing the ladder from the
# bottom costs at most about twice the rung it stops at.
EF_LADDER: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096)
TARGET_RECALL = 0.99
# recall@k falls as k nears ef, so calibrating for the largest k callers use (fusion takes
# 2-4 anchors) covers the smaller ones, and 4 answers per query halve the sampling noise.
CALIBRATION_K = 4
SAMPLE_SIZE = 256
# Below this many vectors a build keeps the size table (ef 128 visits most of such a graph).
MIN_CALIBRATION_SIZE = 256

# search(queries, k, ef) -> (n, k) row labels, as hnswlib's knn_query returns them.
SearchFn = Callable[[np.ndarray, int, int], np.ndarray]


@dataclass(frozen=True)
class Calibration:
    """The ef calibration chose, the sampled recall it reached, and what it measured on."""

    ef: int
    recall: float
    k: int
    target: float
    sample: int
    size: int
    seconds: float = 0.0

    def to_header(self) -> dict[str, Any]:
        """JSON-ready fields for an index header (seconds are not part of the index)."""
        fields = asdict(self)
        del fields["seconds"]
        return fields

    @classmethod
    def from_header(cls, fields: dict[str, Any]) -> Calibration:
        """Inverse of `to_header`."""
        return cls(
            ef=int(fields["ef"]),
            recall=float(fields["recall"]),
            k=int(fields["k"]),
            target=float(fields["target"]),
            sample=int(fields["sample"]),
            size=int(fields["size"]),
        )


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k stored unit vectors most cosine-similar to each query (one product)."""
    scores = queries @ vectors.T
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def fresh_queries(vectors: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """New points beside the stored `rows`, each as far from its row as the row's nearest other.

    A stored vector is a poor query: search lands on its node, whose links are its neighbours,
    so it reads near-perfect recall at an ef that misses fresh queries (isotropic 3k: 1.0 at
    ef 32 where random queries reach 0.75). Stepping off at the local neighbour distance makes a
    point like the next one the data would hold: random-like on isotropic data, within the
    cluster on clustered data.
    """
    stored = vectors[rows]
    scores = stored @ vectors.T
    scores[np.arange(len(rows)), rows] = -np.inf
    nearest = np.clip(scores.max(axis=1), -1.0, 1.0)
    noise = rng.standard_normal(stored.shape).astype(np.float32)
    noise -= np.sum(noise * stored, axis=1, keepdims=True) * stored  # orthogonal to the row
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    # Along an orthogonal direction, a step of tan(angle) turns the row by that angle.
    step = np.tan(np.minimum(np.arccos(nearest), 1.5))[:, None]
    queries = stored + step * noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of `truth` (n, k) rows that appear in `found` (n, k) row by row."""
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True))
    return hits / truth.size


def calibrate_ef(
    search: SearchFn,
    vectors: np.ndarray,
    *,
    k: int = CALIBRATION_K,
    target: float = TARGET_RECALL,
    sample: int = SAMPLE_SIZE,
    seed: int = 0,
    ladder: tuple[int, ...] = EF_LADDER,
) -> Calibration:
    """The smallest ef on `ladder` whose sampled recall@k on fresh queries reaches `target`.

    Args:
        search: runs the index's search at a given ef (see `SearchFn`).
        vectors: every stored vector as unit rows, row number = label.
        k: neighbours per query that must be found.
        target: recall@k to reach.
        sample: queries, one beside each of that many stored vectors (fewer in a small index).
        seed: picks the sample and its offsets, so a rebuild calibrates the same way.
        ladder: ef values to try, ascending.

    Returns:
        The chosen ef (the top rung when none reaches the target) and its sampled recall.

    Raises:
        ValueError: when the index holds no more than k vectors.
    """
    start = time.perf_counter()
    size = len(vectors)
    if size <= k:
        raise ValueError(f"calibrating recall@{k} needs more than {k} vectors, got {size}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(size, size=min(size, sample), replace=False))
    queries = fresh_queries(vectors, rows, rng)
    truth = exact_top_k(vectors, queries, k)
    ef, reached = ladder[-1], 0.0
    for rung in ladder:
        reached = recall(search(queries, k, max(rung, k)), truth)
        if reached >= target:
            ef = rung
            break
    seconds = time.perf_counter() - start
    return Calibration(ef, reached, k, target, len(rows), size, seconds)
