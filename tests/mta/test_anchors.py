"""Anchor selection on synthetic embeddings with known cluster structure."""

import numpy as np
import pytest

from mta.anchors import select_anchors


def blobs(seed: int = 0, per_blob: int = 8, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Three tight, far-apart blobs of unit vectors; returns (vectors, blob label per row)."""
    rng = np.random.default_rng(seed)
    centers = np.eye(dim)[:3] * 10.0
    rows, labels = [], []
    for blob, center in enumerate(centers):
        rows.append(center + rng.normal(scale=0.3, size=(per_blob, dim)))
        labels += [blob] * per_blob
    vectors = np.concatenate(rows)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), np.array(labels)


def test_one_anchor_per_blob_and_it_is_the_richest_member() -> None:
    vectors, blob = blobs()
    lengths = [10 + (row * 7) % 13 for row in range(len(vectors))]
    selection = select_anchors(vectors, lengths, 3, min_history=8, seed=0)

    assert sorted(blob[selection.anchor_rows]) == [0, 1, 2]
    for row in selection.anchor_rows:
        same_blob = np.flatnonzero(blob == blob[row])
        assert lengths[row] == max(lengths[r] for r in same_blob)
    # Clusters coincide with blobs: one label per blob, three labels in all.
    labels_per_blob = {
        b: {selection.cluster_of[r] for r in np.flatnonzero(blob == b)} for b in range(3)
    }
    assert all(len(labels) == 1 for labels in labels_per_blob.values())
    assert len({next(iter(labels)) for labels in labels_per_blob.values()}) == 3
    # anchor_rows is ordered by cluster label.
    assert [selection.cluster_of[row] for row in selection.anchor_rows] == [0, 1, 2]


def test_short_histories_are_excluded_from_clusters_and_anchors() -> None:
    vectors, _ = blobs()
    lengths = [20 if row % 2 == 0 else 3 for row in range(len(vectors))]
    selection = select_anchors(vectors, lengths, 3, min_history=8)

    for row, length in enumerate(lengths):
        assert (selection.cluster_of[row] == -1) == (length < 8)
    assert all(lengths[row] >= 8 for row in selection.anchor_rows)
    assert sorted(r for c in range(3) for r in selection.members(c)) == list(range(0, 24, 2))


def test_equal_histories_pick_the_member_closest_to_the_centroid() -> None:
    dim = 4
    center = np.array([1.0, 0.0, 0.0, 0.0])
    offsets = np.array([[0, 0.5, 0, 0], [0, 0.05, 0, 0], [0, -0.5, 0, 0]])
    far = np.array([[0, 0, 1.0, 0], [0, 0, 1.0, 0.1]])
    vectors = np.concatenate([center + offsets, far]).reshape(-1, dim)
    selection = select_anchors(vectors, [9] * 5, 2, min_history=8)
    first_cluster = selection.cluster_of[0]
    assert selection.anchor_rows[first_cluster] == 1


def test_selection_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 8))
    lengths = rng.integers(8, 30, size=40).tolist()
    first = select_anchors(vectors, lengths, 5, seed=7)
    second = select_anchors(vectors, lengths, 5, seed=7)
    assert first == second
    assert len(set(first.anchor_rows)) == 5


def test_more_anchors_than_eligible_candidates_is_a_clear_error() -> None:
    vectors, _ = blobs()
    lengths = [8] * 2 + [2] * (len(vectors) - 2)
    with pytest.raises(ValueError, match="cannot select 3 anchors: only 2 of 24 candidates"):
        select_anchors(vectors, lengths, 3, min_history=8)


@pytest.mark.parametrize(
    ("embeddings", "lengths", "k", "message"),
    [
        (np.ones((3, 2)), [9, 9], 1, "3 embeddings but 2 history lengths"),
        (np.ones(3), [9, 9, 9], 1, "2-d array"),
        (np.ones((3, 2)), [9, 9, 9], 0, "at least 1"),
        (np.array([[np.nan, 1.0], [1.0, 0.0]]), [9, 9], 1, "NaN"),
    ],
)
def test_bad_inputs_raise_value_error(
    embeddings: np.ndarray, lengths: list[int], k: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        select_anchors(embeddings, lengths, k)
