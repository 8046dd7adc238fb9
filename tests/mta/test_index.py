"""HNSW anchor index: recall against brute force, serialization, and input checks."""

import json
import threading
from dataclasses import replace

import numpy as np
import pytest

from mta.index import AnchorIndex, ef_for_size
from mta.index_calibration import EF_LADDER, MIN_CALIBRATION_SIZE


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Random unit vectors."""
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """Rows of the k highest cosine similarities (vectors are unit rows)."""
    sims = vectors @ (query / np.linalg.norm(query))
    return list(np.argsort(-sims, kind="stable")[:k])


def clustered_rows(n: int, dim: int, seed: int = 0, centres: int = 30) -> np.ndarray:
    """Unit vectors in Gaussian clusters (cosine ~0.8 to their centre); the centres are fixed."""
    rng = np.random.default_rng(seed)
    middles = unit_rows(centres, dim, seed=7)
    noise = rng.normal(size=(n, dim)).astype(np.float32) * (0.75 / np.sqrt(dim))
    vectors = middles[rng.integers(0, centres, n)] + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def recall_at_2(index: AnchorIndex, vectors: np.ndarray, queries: np.ndarray) -> float:
    """Share of the exact top-2 (ids are row numbers) that the index returns."""
    found = 0
    for query in queries:
        exact = {str(row) for row in brute_force(vectors, query, 2)}
        found += len(exact & {anchor for anchor, _ in index.query(query, 2)})
    return found / (2 * len(queries))


@pytest.fixture(scope="module", params=["isotropic", "clustered"])
def calibrated(request: pytest.FixtureRequest) -> tuple[str, np.ndarray, AnchorIndex]:
    """A 3000-vector 384-d index per data shape, calibrated by its build."""
    make_rows = unit_rows if request.param == "isotropic" else clustered_rows
    vectors = make_rows(3000, 384, seed=1)
    # One insertion thread: the same graph on every run (more threads build a slightly
    # different one each time, which made the fresh-query recall flaky around 0.99).
    ids = [str(n) for n in range(3000)]
    return request.param, vectors, AnchorIndex.build(ids, vectors, num_threads=1)


def test_calibrated_ef_reaches_recall_at_2_of_099_on_fresh_queries(
    calibrated: tuple[str, np.ndarray, AnchorIndex],
) -> None:
    shape, vectors, index = calibrated
    assert index.calibration is not None and index.ef == index.calibration.ef
    # Fresh points of the same distribution: random directions for the isotropic set, new
    # members of the same clusters for the clustered one (no user sits between all topics).
    make_rows = unit_rows if shape == "isotropic" else clustered_rows
    fresh = make_rows(200, 384, seed=2)
    near = vectors[:200] + 0.2 * unit_rows(200, 384, seed=3)
    assert recall_at_2(index, vectors, fresh) >= 0.99
    assert recall_at_2(index, vectors, near) >= 0.99


def test_calibration_picks_a_small_ef_on_clustered_data_and_a_larger_one_on_isotropic(
    calibrated: tuple[str, np.ndarray, AnchorIndex],
) -> None:
    shape, _, index = calibrated
    calibration = index.calibration
    assert calibration is not None
    assert (calibration.size, calibration.sample) == (3000, 256)
    assert calibration.recall >= calibration.target == 0.99
    if shape == "clustered":
        assert calibration.ef <= 64  # the size table would say 256
    else:
        assert 128 <= calibration.ef <= 1024


def test_calibration_round_trips_through_bytes_and_explicit_ef_wins() -> None:
    vectors = clustered_rows(600, 32, seed=4)
    ids = [f"c{n}" for n in range(600)]
    index = AnchorIndex.build(ids, vectors)
    restored = AnchorIndex.from_bytes(index.to_bytes())
    assert index.calibration is not None
    assert restored.calibration == replace(index.calibration, seconds=0.0)
    assert restored.ef_search is None and restored.ef == index.ef
    for query in clustered_rows(20, 32, seed=5):
        assert restored.query(query, 4) == index.query(query, 4)

    pinned = AnchorIndex.build(ids, vectors, ef_search=300)
    assert pinned.calibration is None  # nothing to measure: the caller chose
    pinned.calibrate(k=2, sample=50)
    assert pinned.ef == 300 and pinned.calibration.sample == 50


def test_queries_during_calibration_keep_answering_right() -> None:
    vectors = clustered_rows(800, 32, seed=8)
    index = AnchorIndex.build([str(n) for n in range(800)], vectors, calibrate=False)
    errors: list[str] = []

    def ask() -> None:
        for row in range(0, 800, 7):
            if index.query(vectors[row], 1)[0][0] != str(row):
                errors.append(str(row))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    index.calibrate(sample=100)
    for thread in threads:
        thread.join()
    assert errors == [] and index.calibration is not None


def test_tiny_builds_use_the_size_table_and_growth_recalibrates() -> None:
    vectors = unit_rows(MIN_CALIBRATION_SIZE + 100, 16, seed=6)
    ids = [f"a{n}" for n in range(len(vectors))]
    tiny = AnchorIndex.build(ids[:30], vectors[:30])
    assert tiny.calibration is None and tiny.ef == ef_for_size(30)
    grown = AnchorIndex.build(ids[:MIN_CALIBRATION_SIZE], vectors[:MIN_CALIBRATION_SIZE])
    assert grown.calibration is not None and grown.calibration.size == MIN_CALIBRATION_SIZE
    assert grown.ef in EF_LADDER
    grown.add(ids[MIN_CALIBRATION_SIZE:], vectors[MIN_CALIBRATION_SIZE:])
    assert grown.calibration.size == len(vectors)  # grew by over 10 %: measured again
    assert grown.query(vectors[-1], 1)[0][0] == ids[-1]


def test_ef_grows_with_the_index_size_and_is_at_least_k() -> None:
    efs = [ef_for_size(n) for n in (0, 1_000, 10_000, 100_000, 10_000_000)]
    assert efs == sorted(efs)
    index = AnchorIndex.build([str(n) for n in range(5)], unit_rows(5, 8))
    assert index.ef == ef_for_size(5)
    index.ef_search = 1  # a query for more anchors than ef still returns all of them
    assert len(index.query(unit_rows(1, 8)[0], 4)) == 4


def test_multi_thread_build_matches_one_thread() -> None:
    vectors = unit_rows(2000, 64, seed=4)
    ids = [f"v{n}" for n in range(len(vectors))]
    one = AnchorIndex.build(ids, vectors, num_threads=1)
    many = AnchorIndex.build(ids, vectors, num_threads=4)
    assert many.ids == one.ids == ids
    for row in range(0, 2000, 97):
        assert many.query(vectors[row], 1)[0][0] == one.query(vectors[row], 1)[0][0] == ids[row]
    queries = unit_rows(50, 64, seed=5)
    assert [many.query(q, 2) for q in queries] == [one.query(q, 2) for q in queries]


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


def test_ef_chosen_by_size_survives_bytes_and_follows_growth() -> None:
    vectors = unit_rows(40, 16)
    index = AnchorIndex.build([f"a{n}" for n in range(30)], vectors[:30])
    restored = AnchorIndex.from_bytes(index.to_bytes())
    assert restored.ef_search is None
    assert restored.ef == index.ef == ef_for_size(30)
    restored.add([f"a{n}" for n in range(30, 40)], vectors[30:])
    assert restored.ef == ef_for_size(40)
    assert restored.query(vectors[35], 1)[0][0] == "a35"


@pytest.mark.parametrize(("written_ef", "loaded_ef"), [(128, 128), (None, ef_for_size(300))])
def test_blobs_written_before_calibration_still_load_with_their_ef(
    written_ef: int | None, loaded_ef: int
) -> None:
    vectors = unit_rows(300, 8)
    ids = [f"a{n}" for n in range(300)]
    payload = AnchorIndex.build(ids, vectors).to_bytes()
    magic, header_end = payload[:8], 12 + int.from_bytes(payload[8:12], "little")
    # The headers exactly as the earlier code wrote them: ef_search a number (before the size
    # table), or null for the size table; neither has a calibration.
    old_header = json.dumps(
        {
            "dim": 8,
            "ids": ids,
            "m": 32,
            "ef_construction": 200,
            "ef_search": written_ef,
            "seed": 0,
            "space": "cosine",
        },
        separators=(",", ":"),
    ).encode()
    old_blob = magic + len(old_header).to_bytes(4, "little") + old_header + payload[header_end:]
    loaded = AnchorIndex.from_bytes(old_blob)
    assert (loaded.ef_search, loaded.ef, loaded.m) == (written_ef, loaded_ef, 32)
    assert loaded.calibration is None
    assert loaded.query(vectors[7], 1)[0][0] == "a7"


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
