"""HNSW index over anchor embeddings (hnswlib, cosine), serializable to bytes for the blob store."""

from __future__ import annotations

import json
import os
import struct
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from mta.index_calibration import (
    CALIBRATION_K,
    MIN_CALIBRATION_SIZE,
    SAMPLE_SIZE,
    TARGET_RECALL,
    Calibration,
    calibrate_ef,
)

_MAGIC = b"MTAHNSW1"
_HEADER_LEN = struct.Struct("<I")

# Recall is bound by how many candidates a query visits (ef), and the ef a set needs depends
# on its size and even more on its shape, so a build measures it (mta/index_calibration.py):
# clustered 100k sets reach recall@2 1.0 at ef 64, isotropic random 384-d vectors (the
# hardest case) need ~1536-2048. A denser graph does not buy that back: M=64 needs ef 768
# at 100k isotropic (about as many distances, 2M per visited node) and builds 2.2x slower,
# so M and ef_construction stay; the recall and latency curve is in the "Anchor lookup"
# section of docs/benchmarks.md.
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 200
# ef_search by anchor count (the first row whose bound holds), for an index neither set nor
# calibrated (tiny ones, blobs written before calibration); sized for the isotropic worst case.
_EF_BY_SIZE: tuple[tuple[int, int], ...] = (
    (2_000, 128),
    (5_000, 256),
    (20_000, 512),
    (50_000, 1024),
)
_EF_LARGEST = 2048
# A calibrated index re-measures its ef once `add` has grown it by this factor.
_RECALIBRATE_GROWTH = 1.1


def ef_for_size(count: int) -> int:
    """The ef_search an index of `count` anchors uses when none was set."""
    for bound, ef in _EF_BY_SIZE:
        if count <= bound:
            return ef
    return _EF_LARGEST


def default_threads() -> int:
    """Build threads when none are given: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Validate vectors as a finite float32 (n, dim) matrix (a single vector becomes one row)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise ValueError(f"vectors must be 1-d or 2-d, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"vectors have dimension {matrix.shape[1]}, the index holds {dim}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("vectors contain NaN or infinite values")
    if np.any(np.linalg.norm(matrix, axis=1) == 0):
        raise ValueError("a zero vector has no cosine similarity")
    return matrix


class AnchorIndex:
    """Approximate nearest anchors by cosine similarity, keyed by anchor id strings."""

    def __init__(
        self,
        dim: int,
        *,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int | None = None,
        seed: int = 0,
    ) -> None:
        """Create an empty index for `dim`-dimensional vectors (ef_search None: measured)."""
        if dim < 1:
            raise ValueError(f"index dimension must be positive, got {dim}")
        if ef_search is not None and ef_search < 1:
            raise ValueError(f"ef_search must be positive, got {ef_search}")
        self.dim = dim
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.seed = seed
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self.calibration: Calibration | None = None
        self._hnsw: Any = None
        self._ef_now = 0
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        vectors: np.ndarray,
        *,
        num_threads: int | None = None,
        calibrate: bool = True,
        **options: Any,
    ) -> AnchorIndex:
        """Build an index holding `vectors` under `ids` (options as for the constructor).

        Unless an ef_search is given, `calibrate` false or fewer than MIN_CALIBRATION_SIZE
        vectors, the build ends with `calibrate()`, which picks the ef queries use.
        """
        matrix = _as_matrix(vectors)
        index = cls(matrix.shape[1], **options)
        index.add(ids, matrix, num_threads=num_threads)
        if calibrate and index.ef_search is None and len(index) >= MIN_CALIBRATION_SIZE:
            index.calibrate(num_threads=num_threads)
        return index

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        """Anchor ids in insertion order."""
        return list(self._ids)

    @property
    def ef(self) -> int:
        """The ef_search queries use now: the one set, else the calibrated one, else by size."""
        if self.ef_search is not None:
            return self.ef_search
        calibration = self.calibration
        if calibration is not None:
            return calibration.ef
        return ef_for_size(len(self._ids))

    def calibrate(
        self,
        *,
        target_recall: float = TARGET_RECALL,
        k: int = CALIBRATION_K,
        sample: int = SAMPLE_SIZE,
        num_threads: int | None = None,
    ) -> Calibration:
        """Measure the smallest ef whose recall@k reaches the target; queries then use it.

        A seeded sample of stored vectors, each stepped off by its nearest-neighbour distance,
        is searched at rising ef and checked against exact search (see index_calibration).
        An explicit ef_search still wins over the result.

        Raises:
            ValueError: when the index holds no more than k vectors.
        """
        with self._lock:
            count = len(self._ids)
            vectors = self._hnsw.get_items(range(count)) if count else np.empty((0, self.dim))
        threads = max(1, num_threads if num_threads is not None else default_threads())

        def search(queries: np.ndarray, want: int, ef: int) -> np.ndarray:
            # One rung at a time under the lock, so live queries interleave between rungs.
            with self._lock:
                self._hnsw.set_ef(ef)
                self._ef_now = ef
                labels, _ = self._hnsw.knn_query(queries, k=want, num_threads=threads)
            return labels

        self.calibration = calibrate_ef(
            search,
            np.asarray(vectors, dtype=np.float32),
            k=k,
            target=target_recall,
            sample=sample,
            seed=self.seed,
        )
        return self.calibration

    def _new_hnsw(self, capacity: int) -> Any:
        """Create the hnswlib structure with room for `capacity` vectors."""
        import hnswlib

        hnsw = hnswlib.Index(space="cosine", dim=self.dim)
        hnsw.init_index(
            max_elements=max(capacity, 1),
            ef_construction=self.ef_construction,
            M=self.m,
            random_seed=self.seed,
        )
        return hnsw

    def add(
        self, ids: Sequence[str], vectors: np.ndarray, *, num_threads: int | None = None
    ) -> None:
        """Add vectors under new ids.

        Args:
            ids: one new id per row.
            vectors: (n, dim) vectors (need not be normalized).
            num_threads: insertion threads; None uses every core. More than one thread
                builds a slightly different (equally good) graph on each run.

        A calibrated index calibrates again once it has grown by 10 %.

        Raises:
            ValueError: on a count/dimension mismatch, non-finite or zero vectors, or an id
                that is repeated or already in the index.
        """
        matrix = _as_matrix(vectors, self.dim)
        ids = [str(i) for i in ids]
        if len(ids) != matrix.shape[0]:
            raise ValueError(f"{len(ids)} ids but {matrix.shape[0]} vectors")
        if len(set(ids)) != len(ids):
            raise ValueError("ids passed to the index repeat")
        clash = [i for i in ids if i in self._row_of]
        if clash:
            raise ValueError(f"anchor id {clash[0]!r} is already in the index")
        if not ids:
            return
        with self._lock:
            total = len(self._ids) + len(ids)
            if self._hnsw is None:
                self._hnsw = self._new_hnsw(total)
            elif total > self._hnsw.get_max_elements():
                self._hnsw.resize_index(max(total, 2 * self._hnsw.get_max_elements()))
            start = len(self._ids)
            threads = num_threads if num_threads is not None else default_threads()
            # Queries wait on the lock, so they never see a half-inserted batch.
            self._hnsw.add_items(matrix, np.arange(start, total), num_threads=max(1, threads))
            self._ids.extend(ids)
            self._row_of.update({anchor: start + n for n, anchor in enumerate(ids)})
        calibration = self.calibration
        if calibration is not None and total > _RECALIBRATE_GROWTH * calibration.size:
            self.calibrate(
                target_recall=calibration.target,
                k=calibration.k,
                sample=calibration.sample,
                num_threads=num_threads,
            )

    def query(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Nearest anchors to `vector`.

        Args:
            vector: a (dim,) query vector (need not be normalized).
            k: how many anchors; more than the index holds returns all of them.

        Returns:
            (anchor id, cosine similarity) pairs, most similar first.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query = _as_matrix(vector, self.dim)
        if query.shape[0] != 1:
            raise ValueError(f"query takes one vector, got {query.shape[0]}")
        if not self._ids:
            return []
        k = min(k, len(self._ids))
        with self._lock:
            # hnswlib searches with ef candidates; fewer than k would drop results.
            ef = max(self.ef, k)
            if ef != self._ef_now:
                self._hnsw.set_ef(ef)
                self._ef_now = ef
            labels, distances = self._hnsw.knn_query(query, k=k, num_threads=1)
        pairs = [
            (self._ids[int(label)], float(1.0 - distance))
            for label, distance in zip(labels[0], distances[0], strict=True)
        ]
        # Stable order on equal scores so identical inputs give identical answers.
        return sorted(pairs, key=lambda pair: (-pair[1], self._row_of[pair[0]]))

    def to_bytes(self) -> bytes:
        """Serialize: magic, header length, JSON header (ids, dim, params), hnswlib payload.

        An ef_search not set is written as null and the calibration (if any) beside it, so
        the loaded index answers with the same ef; a number (as every earlier blob holds) is
        kept as set, and a header without a calibration falls back to the size table.
        """
        header = {
            "dim": self.dim,
            "ids": self._ids,
            "m": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "seed": self.seed,
            "space": "cosine",
            "calibration": None if self.calibration is None else self.calibration.to_header(),
        }
        header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
        payload = b""
        if self._hnsw is not None:
            with self._lock:
                payload = _hnsw_to_bytes(self._hnsw)
        return _MAGIC + _HEADER_LEN.pack(len(header_bytes)) + header_bytes + payload

    @classmethod
    def from_bytes(cls, data: bytes) -> AnchorIndex:
        """Load an index written by `to_bytes`.

        Raises:
            ValueError: when the bytes are not an index written by this class.
        """
        prefix = len(_MAGIC) + _HEADER_LEN.size
        if len(data) < prefix or not data.startswith(_MAGIC):
            raise ValueError("not an anchor index (bad magic bytes)")
        (header_len,) = _HEADER_LEN.unpack_from(data, len(_MAGIC))
        try:
            header = json.loads(data[prefix : prefix + header_len].decode("utf-8"))
            ids = [str(i) for i in header["ids"]]
            index = cls(
                int(header["dim"]),
                m=int(header["m"]),
                ef_construction=int(header["ef_construction"]),
                ef_search=None if header["ef_search"] is None else int(header["ef_search"]),
                seed=int(header["seed"]),
            )
            if header.get("calibration") is not None:
                index.calibration = Calibration.from_header(header["calibration"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"anchor index header is garbled: {exc}") from None
        payload = data[prefix + header_len :]
        if ids:
            index._hnsw = _hnsw_from_bytes(payload, index.dim, len(ids))
            if index._hnsw.get_current_count() != len(ids):
                raise ValueError(
                    f"anchor index holds {index._hnsw.get_current_count()} vectors "
                    f"but its header lists {len(ids)} ids"
                )
        index._ids = ids
        index._row_of = {anchor: row for row, anchor in enumerate(ids)}
        return index


def _hnsw_to_bytes(hnsw: Any) -> bytes:
    """hnswlib only saves to a path: round-trip through a private temp file."""
    fd, path = tempfile.mkstemp(prefix="mta-hnsw-", suffix=".bin")
    os.close(fd)
    try:
        hnsw.save_index(path)
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(path)


def _hnsw_from_bytes(payload: bytes, dim: int, count: int) -> Any:
    """Load an hnswlib payload through a temp file."""
    import hnswlib

    if not payload:
        raise ValueError("anchor index payload is empty")
    fd, path = tempfile.mkstemp(prefix="mta-hnsw-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        hnsw = hnswlib.Index(space="cosine", dim=dim)
        try:
            hnsw.load_index(path, max_elements=count)
        except RuntimeError as exc:
            raise ValueError(f"anchor index payload is garbled: {exc}") from None
        return hnsw
    finally:
        os.unlink(path)
