"""Anchor selection: cluster candidate users by embedding, keep the richest user per cluster."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# k-means restarts: fixed so that a seed alone decides the result.
KMEANS_N_INIT = 10


@dataclass
class AnchorSelection:
    """Chosen anchors and the cluster of every candidate.

    Attributes:
        anchor_rows: candidate row of each anchor, one per cluster, ordered by cluster label.
        cluster_of: cluster label per candidate row; -1 for candidates whose history is too
            short to take part.
    """

    anchor_rows: list[int]
    cluster_of: list[int]

    def members(self, cluster: int) -> list[int]:
        """Candidate rows assigned to `cluster`."""
        return [row for row, label in enumerate(self.cluster_of) if label == cluster]


def select_anchors(
    embeddings: np.ndarray,
    history_lengths: Sequence[int],
    k: int,
    *,
    min_history: int = 8,
    seed: int = 0,
) -> AnchorSelection:
    """Select `k` anchors by seeded k-means over eligible candidates.

    Candidates with at least `min_history` items are clustered; in each cluster the user
    with the longest history becomes the anchor (ties: the one closest to the centroid,
    then the lowest row).

    Args:
        embeddings: (n, dim) candidate user embeddings.
        history_lengths: history length per candidate row.
        k: number of anchors (clusters).
        min_history: minimum history length for a candidate to be eligible.
        seed: k-means random state.

    Returns:
        The anchors and the cluster label of every candidate.

    Raises:
        ValueError: on mismatched inputs, k < 1, or fewer eligible candidates than k.
    """
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d array, got shape {vectors.shape}")
    if len(history_lengths) != vectors.shape[0]:
        raise ValueError(
            f"{vectors.shape[0]} embeddings but {len(history_lengths)} history lengths"
        )
    if k < 1:
        raise ValueError(f"number of anchors must be at least 1, got {k}")
    if not np.all(np.isfinite(vectors)):
        raise ValueError("embeddings contain NaN or infinite values")
    lengths = np.asarray(history_lengths, dtype=np.int64)
    eligible = np.flatnonzero(lengths >= min_history)
    if k > len(eligible):
        raise ValueError(
            f"cannot select {k} anchors: only {len(eligible)} of {len(lengths)} candidates "
            f"have at least {min_history} history items (lower --min-history or --anchors)"
        )

    from sklearn.cluster import KMeans

    points = vectors[eligible]
    kmeans = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit(points)
    labels = kmeans.labels_
    distances = np.linalg.norm(points - kmeans.cluster_centers_[labels], axis=1)

    cluster_of = [-1] * len(lengths)
    for position, row in enumerate(eligible):
        cluster_of[int(row)] = int(labels[position])
    anchor_rows: list[int] = []
    for cluster in range(k):
        positions = np.flatnonzero(labels == cluster)
        if len(positions) == 0:
            # KMeans never leaves a cluster empty when k <= n points; guard anyway.
            raise ValueError(f"k-means produced an empty cluster {cluster}; try fewer anchors")
        best = min(
            positions,
            key=lambda p: (-int(lengths[eligible[p]]), float(distances[p]), int(eligible[p])),
        )
        anchor_rows.append(int(eligible[best]))
    return AnchorSelection(anchor_rows=anchor_rows, cluster_of=cluster_of)
