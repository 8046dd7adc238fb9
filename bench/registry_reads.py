"""SQLite registry reads next to a writer in another process: read-only vs write-lock sessions.

A registry read (one row by primary key plus a count of the table) runs in a loop on reader
threads while a second process writes the way a bulk import does: it takes the write lock,
inserts, holds the transaction ``HOLD_MS``, commits, pauses ``GAP_MS``, and again. Each
read runs either in a read-only session (`ctx.read_session()`: a deferred transaction that
takes no lock) or in a writing session (`BEGIN IMMEDIATE`, what every registry read did
before). The writer reports how long each of its `BEGIN IMMEDIATE` waited for the lock, so
the table shows both sides: what the writer does to readers, and what readers do to it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.report import Section
from bench.timing import percentile

HOLD_MS = 50
GAP_MS = 20
READERS = (1, 2)
ROWS = 2000

# The writer process: cycles of BEGIN IMMEDIATE / insert / hold / COMMIT; prints its waits.
_WRITER = """
import sqlite3, sys, time
path, seconds, hold, gap = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
phase = sys.argv[5]
conn = sqlite3.connect(path, isolation_level=None, timeout=60)
conn.execute("PRAGMA busy_timeout=60000")
waits, n, end = [], 0, time.perf_counter() + seconds
while time.perf_counter() < end:
    t0 = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    waits.append(time.perf_counter() - t0)
    conn.execute("INSERT INTO blobs (digest, algo, size, kind, created_at) VALUES "
                 "(?, 'sha256', 1, 'profile', '2026-01-01')", (f"{phase}{n:062d}",))
    n += 1
    time.sleep(hold)
    conn.execute("COMMIT")
    time.sleep(gap)
print(" ".join(f"{w:.6f}" for w in waits))
"""


def _seed(url: str) -> None:
    """A migrated registry database with ROWS blob rows."""
    from mta.registry.db import make_engine, make_session_factory, session_scope, upgrade
    from mta.registry.models import SqlBlob, utcnow

    engine = make_engine(url)
    upgrade(engine)
    with session_scope(make_session_factory(engine)) as session:
        for i in range(ROWS):
            session.add(
                SqlBlob(
                    digest=f"{i:064d}", algo="sha256", size=1, kind="profile", created_at=utcnow()
                )
            )
    engine.dispose()


def _read_loop(factory, read_only: bool, stop: threading.Event, out: list[float]) -> None:
    """Time registry reads until `stop` is set."""
    from sqlalchemy import func, select

    from mta.registry.db import session_scope
    from mta.registry.models import SqlBlob

    i = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        with session_scope(factory, read_only=read_only) as session:
            session.get(SqlBlob, f"{i % ROWS:064d}")
            session.scalar(select(func.count()).select_from(SqlBlob))
        out.append(time.perf_counter() - t0)
        i += 1


def _reads(factory, read_only: bool, readers: int, until: Callable[[], None]) -> list[float]:
    """Read latencies of `readers` threads, reading until `until()` returns."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(readers)]
    threads = [
        threading.Thread(target=_read_loop, args=(factory, read_only, stop, out))
        for out in latencies
    ]
    for thread in threads:
        thread.start()
    try:
        until()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return [x for out in latencies for x in out]


def _phase(path: Path, read_only: bool, readers: int, seconds: float, writer: bool) -> Phase:
    """One phase: `readers` threads read for `seconds`, next to the writer process or alone."""
    from mta.registry.db import make_engine, make_session_factory

    engine = make_engine(f"sqlite:///{path}")
    factory = make_session_factory(engine)
    output = [""]
    if writer:
        args = [str(path), str(seconds), str(HOLD_MS / 1e3), str(GAP_MS / 1e3)]
        args.append(f"{readers}{'rw'[read_only]}")  # distinct digests per phase
        process = subprocess.Popen(
            [sys.executable, "-c", _WRITER, *args], stdout=subprocess.PIPE, text=True
        )

        def until() -> None:
            output[0] = process.communicate()[0]
            if process.returncode != 0:
                raise RuntimeError(f"writer process failed with exit code {process.returncode}")

    else:

        def until() -> None:
            time.sleep(seconds)

    try:
        reads = _reads(factory, read_only, readers, until)
    finally:
        engine.dispose()
    return Phase(read_only, readers, writer, seconds, reads, [float(w) for w in output[0].split()])


@dataclass
class Phase:
    """What one phase measured."""

    read_only: bool
    readers: int
    writer: bool
    seconds: float
    reads: list[float]
    waits: list[float]

    @property
    def rate(self) -> float:
        """Reads per second."""
        return len(self.reads) / self.seconds


def bench_registry_reads(quick: bool) -> Section:
    """Read latency and writer lock waits, read-only sessions against write-lock sessions."""
    seconds = 4.0 if quick else 10.0
    section = Section(
        f"SQLite registry reads next to a writer process (holds the write lock {HOLD_MS} ms, "
        f"pauses {GAP_MS} ms)",
        [
            "readers",
            "writer",
            "read session",
            "reads/s",
            "read p50 ms",
            "read p99 ms",
            "writer lock wait p99 ms",
            "writer commits",
            "reads/s vs write-lock",
        ],
    )
    with tempfile.TemporaryDirectory(prefix="mta-bench-reads-") as tmp:
        path = Path(tmp) / "registry.db"
        _seed(f"sqlite:///{path}")
        phases = [
            _phase(path, read_only, readers, seconds, writer)
            for readers in READERS
            for writer in (False, True)
            for read_only in (False, True)
        ]
    for phase in phases:
        baseline = next(
            p
            for p in phases
            if (p.readers, p.writer) == (phase.readers, phase.writer) and not p.read_only
        )
        section.add(
            phase.readers,
            "running" if phase.writer else "none",
            "read-only (deferred)" if phase.read_only else "write lock (BEGIN IMMEDIATE)",
            phase.rate,
            percentile(phase.reads, 50) * 1e3,
            percentile(phase.reads, 99) * 1e3,
            percentile(phase.waits, 99) * 1e3 if phase.waits else float("nan"),
            len(phase.waits) if phase.writer else "–",
            phase.rate / baseline.rate if baseline.rate else float("nan"),
        )
    section.notes.append(
        f"{seconds:.0f} s per phase, every phase in this run on the same database. A read "
        "in a write-lock session waits for the writer's transaction to end, and while it "
        "holds the lock the writer waits; a read-only session reads the last committed "
        "snapshot (WAL) and neither waits nor blocks. The writer's most commits a phase can "
        f"make: one per {HOLD_MS + GAP_MS} ms."
    )
    return section
