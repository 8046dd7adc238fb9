"""HNSW anchor index: recall against brute force, serialization, and input checks."""

import numpy as np
import pytest

from mta.index import AnchorIndex


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Random unit vectors."""
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """Rows of the k highest cosine similarities (vectors are unit rows)."""
    sims = vectors @ (query / np.linalg.norm(query))
    return list(np.argsort(-sims, kind="stable")[:k])


def test_recall_at_2_against_brute_force_on_2000_vectors() -> None:
    vectors = unit_rows(2000, 384, seed=1)
    ids = [f"anchor-{n}" for n in range(len(vectors))]
    index = AnchorIndex.build(ids, vectors)
    queries = unit_rows(200, 384, seed=2)

    found = 0
    for query in queries:
        exact = {ids[row] for row in brute_force(vectors, query, 2)}
        found += len(exact & {anchor for anchor, _ in index.query(query, 2)})
    assert found / (2 * len(queries)) >= 0.95


def test_scores_are_cosine_similarities_best_first() -> None:
    vectors = unit_rows(100, 32)
    index = AnchorIndex.build([str(n) for n in range(100)], vectors)
    query = np.random.default_rng(5).normal(size=32).astype(np.float32) * 3.0  # not normalized
    results = index.query(query, 5)

    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True)
    for anchor, score in results:
        expected = float(vectors[int(anchor)] @ (query / np.linalg.norm(query)))
        assert score == pytest.approx(expected, abs=1e-5)


def test_a_stored_vector_is_its_own_nearest_anchor() -> None:
    vectors = unit_rows(50, 16)
    index = AnchorIndex.build([f"a{n}" for n in range(50)], vectors)
    best, score = index.query(vectors[17], 1)[0]
    assert best == "a17"
    assert score == pytest.approx(1.0, abs=1e-5)


def test_k_larger_than_the_index_returns_every_anchor() -> None:
    vectors = unit_rows(3, 8)
    index = AnchorIndex.build(["x", "y", "z"], vectors)
    results = index.query(vectors[0], 10)
    assert sorted(anchor for anchor, _ in results) == ["x", "y", "z"]
    assert results[0][0] == "x"


def test_empty_index_answers_nothing() -> None:
    index = AnchorIndex(8)
    assert len(index) == 0
    assert index.query(np.ones(8), 2) == []
    assert AnchorIndex.from_bytes(index.to_bytes()).query(np.ones(8), 2) == []


def test_bytes_round_trip_keeps_ids_params_and_answers() -> None:
    vectors = unit_rows(300, 24)
    ids = [f"u{n}" for n in range(300)]
    index = AnchorIndex.build(ids, vectors, ef_search=80, m=12)
    restored = AnchorIndex.from_bytes(index.to_bytes())

    assert restored.ids == ids
    assert (restored.dim, restored.m, restored.ef_search) == (24, 12, 80)
    for query in unit_rows(20, 24, seed=9):
        assert restored.query(query, 4) == index.query(query, 4)


def test_add_grows_the_index_and_survives_serialization() -> None:
    vectors = unit_rows(20, 8)
    index = AnchorIndex.build([f"a{n}" for n in range(10)], vectors[:10])
    index.add([f"a{n}" for n in range(10, 20)], vectors[10:])
    assert len(index) == 20
    restored = AnchorIndex.from_bytes(index.to_bytes())
    restored.add(["late"], -vectors[0])
    assert restored.query(-vectors[0], 1)[0][0] == "late"
    assert restored.query(vectors[15], 1)[0][0] == "a15"


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        (["a", "b"], np.ones((3, 8)), "2 ids but 3 vectors"),
        (["a"], np.ones((1, 5)), "dimension 5"),
        (["a"], np.zeros((1, 8)), "zero vector"),
        (["a"], np.full((1, 8), np.nan), "NaN"),
        (["a", "a"], np.ones((2, 8)), "repeat"),
        (["taken"], np.ones((1, 8)), "already in the index"),
    ],
)
def test_add_rejects_bad_input(ids: list[str], vectors: np.ndarray, message: str) -> None:
    index = AnchorIndex.build(["taken"], np.ones((1, 8)))
    with pytest.raises(ValueError, match=message):
        index.add(ids, vectors)


def test_query_rejects_bad_k_and_wrong_dimension() -> None:
    index = AnchorIndex.build(["a"], np.ones((1, 8)))
    with pytest.raises(ValueError, match="at least 1"):
        index.query(np.ones(8), 0)
    with pytest.raises(ValueError, match="dimension 4"):
        index.query(np.ones(4), 1)


@pytest.mark.parametrize("cut", ["magic", "header", "payload"])
def test_garbled_bytes_raise_value_error(cut: str) -> None:
    data = AnchorIndex.build([f"a{n}" for n in range(30)], unit_rows(30, 8)).to_bytes()
    garbled = {
        "magic": b"NOTANIDX" + data[8:],
        "header": data[:40],
        "payload": data[: len(data) // 2],
    }[cut]
    with pytest.raises(ValueError):
        AnchorIndex.from_bytes(garbled)
