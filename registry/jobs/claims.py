"""Per-user claims: a user being fused or adapted by one bulk job is left alone by another.

A claim is a row of the `claims` table keyed by the user id: the job holding it, the
process (host and pid) working on it, and when it expires. A job takes the claim in one
short write transaction before it reads the user's state and releases it when the user is
done (success or failure), so two jobs over the same users train each user once: the one
that finds the user claimed reports it `busy`, and a job that claims it after the first
one committed finds the current stack and skips the user.

Taking a claim, in one transaction (SQLite: under `BEGIN IMMEDIATE`; PostgreSQL: each
statement waits for a concurrent writer of the same row, then re-checks its condition):

1. `INSERT ... ON CONFLICT DO NOTHING`: nobody holds the user;
2. else `UPDATE ... WHERE` the claim is this job's own (a Ray unit retried on another
   worker after its worker died) or has expired;
3. else, when the holder is a process of this very machine that no longer exists (a job
   killed with `kill -9`), take it over at once with a compare-and-swap `UPDATE` on the
   holder's job and pid, so a re-run right after a crash does not wait for the lease;
4. else the user is busy.

A claim is a lease: `LEASE_SECONDS` (10 minutes) from when it was taken, renewed every
`RENEW_FRACTION` of that by a background thread while the user is being worked on, so a
job killed on another machine frees its users within one lease and a slow user is never
taken over while its job is alive. Times come from the database's clock on PostgreSQL
(workers on many machines agree on it) and from this machine's on SQLite (one machine).
Leftover claims (a killed job's) change nothing else: fsck and gc ignore them, the next
claim takes them over, and `drop_expired_claims` deletes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from mta.errors import one_line
from mta.registry.context import RegistryContext
from mta.registry.errors import RegistryError
from mta.registry.models import SqlClaim, as_utc, utcnow
from mta.registry.names import USER_ID_PATTERN

log = logging.getLogger(__name__)

LEASE_SECONDS = 600.0  # a claim lasts this long unless renewed
RENEW_FRACTION = 0.25  # renewed after this fraction of the lease (so 3 renewals may fail)
HOST_LEN = 255


def new_job_id() -> str:
    """A fresh job id (32 hex digits)."""
    return uuid.uuid4().hex


@cache
def host_id() -> str:
    """This machine and pid namespace: `hostname/hash` of its boot id and pid namespace.

    Two processes with the same host id see each other's pids, so a claim whose holder has
    this host id and a pid that is gone belongs to a dead process.
    """
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as handle:
        parts.append(handle.read().strip())
    with contextlib.suppress(OSError, AttributeError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    return f"{parts[0][: HOST_LEN - 13]}/{digest}"


@dataclass(frozen=True)
class Holder:
    """Who holds a claim: a job, the process working on the user, and until when."""

    job_id: str
    kind: str
    host: str
    pid: int
    expires_at: datetime

    def describe(self) -> str:
        """One line for a `busy` outcome."""
        host = self.host.rsplit("/", 1)[0]
        return (
            f"claimed by another {self.kind} job ({self.job_id[:8]}, pid {self.pid} on {host}) "
            f"until {self.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        )


@dataclass(frozen=True)
class Claimant:
    """This process working on users for one job."""

    job_id: str
    kind: str  # "adapt" | "fuse"
    lease_seconds: float = LEASE_SECONDS

    @property
    def host(self) -> str:
        """This machine's host id."""
        return host_id()

    @property
    def pid(self) -> int:
        """This process's id (read each time: a forked worker has its own)."""
        return os.getpid()

    def _mine(self, user_id: str) -> Any:
        """The SQL condition: `user_id`'s claim is held by this job in this process."""
        return and_(
            SqlClaim.user_id == user_id,
            SqlClaim.job_id == self.job_id,
            SqlClaim.host == self.host,
            SqlClaim.pid == self.pid,
        )

    def _values(self, now: datetime) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "host": self.host,
            "pid": self.pid,
            "claimed_at": now,
            "expires_at": now + timedelta(seconds=self.lease_seconds),
        }


def take_claim(ctx: RegistryContext, user_id: str, claimant: Claimant) -> Holder | None:
    """Claim `user_id` for `claimant`'s job; None when taken, else who holds it."""
    with ctx.session() as session:
        now = _now(session)
        values = claimant._values(now)
        ours_or_expired = or_(SqlClaim.job_id == claimant.job_id, SqlClaim.expires_at < now)
        for _ in range(3):  # a claim released between two statements makes us go round again
            if _insert_new(session, user_id, values):
                return None
            if _update(session, and_(SqlClaim.user_id == user_id, ours_or_expired), values):
                return None
            row = session.get(SqlClaim, user_id, populate_existing=True)
            if row is None:
                continue
            holder = Holder(row.job_id, row.kind, row.host, row.pid, as_utc(row.expires_at))
            if _holder_is_dead(row.host, row.pid) and _update(
                session,
                and_(
                    SqlClaim.user_id == user_id,
                    SqlClaim.job_id == row.job_id,
                    SqlClaim.host == row.host,
                    SqlClaim.pid == row.pid,
                ),
                values,
            ):
                log.info("took over the claim on %s of dead pid %d", user_id, row.pid)
                return None
            return holder
        raise RegistryError(f"could not claim user {user_id!r}: its claim keeps changing")


def renew_claim(ctx: RegistryContext, user_id: str, claimant: Claimant) -> bool:
    """Push the claim's expiry one lease further; False when this process no longer holds it."""
    with ctx.session() as session:
        expires = _now(session) + timedelta(seconds=claimant.lease_seconds)
        return _update(session, claimant._mine(user_id), {"expires_at": expires})


def release_claim(ctx: RegistryContext, user_id: str, claimant: Claimant) -> None:
    """Delete the claim if this process still holds it."""
    with ctx.session() as session:
        session.execute(delete(SqlClaim).where(claimant._mine(user_id)))


def drop_expired_claims(ctx: RegistryContext) -> int:
    """Delete every expired claim (what killed jobs left); returns how many."""
    with ctx.session() as session:
        result: Any = session.execute(delete(SqlClaim).where(SqlClaim.expires_at < _now(session)))
        return int(result.rowcount or 0)


@contextlib.contextmanager
def claimed(ctx: RegistryContext, user_id: str, claimant: Claimant) -> Iterator[Holder | None]:
    """Hold `user_id`'s claim for the block: yields None when held (renewed in the
    background, released on exit), or the other holder when the user is busy.

    An id no user can have (`USER_ID_PATTERN`) is not claimed: the work fails on its own.
    Releasing is best effort: a claim that cannot be deleted expires with its lease.
    """
    if not USER_ID_PATTERN.fullmatch(user_id):
        yield None
        return
    holder = take_claim(ctx, user_id, claimant)
    if holder is not None:
        yield holder
        return
    renewer = _Renewer(ctx, user_id, claimant)
    renewer.start()
    try:
        yield None
    finally:
        renewer.stop()
        try:
            release_claim(ctx, user_id, claimant)
        except Exception as error:  # noqa: BLE001 - the user's own outcome stands
            log.warning("could not release the claim on %s: %s", user_id, one_line(error))


class _Renewer(threading.Thread):
    """Renews one claim every `RENEW_FRACTION` of its lease until stopped."""

    def __init__(self, ctx: RegistryContext, user_id: str, claimant: Claimant) -> None:
        super().__init__(name=f"mta-claim-{user_id}", daemon=True)
        self.ctx, self.user_id, self.claimant = ctx, user_id, claimant
        self._stopped = threading.Event()

    def run(self) -> None:
        interval = max(self.claimant.lease_seconds * RENEW_FRACTION, 0.01)
        while not self._stopped.wait(interval):
            try:
                if not renew_claim(self.ctx, self.user_id, self.claimant):
                    log.warning("lost the claim on %s (expired and taken over)", self.user_id)
                    return
            except Exception as error:  # noqa: BLE001 - retried at the next interval
                log.warning("could not renew the claim on %s: %s", self.user_id, one_line(error))

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def _now(session: Session) -> datetime:
    """The database's clock on PostgreSQL (shared by every node), this machine's elsewhere."""
    if session.get_bind().dialect.name == "postgresql":
        return as_utc(session.scalar(select(func.now())))
    return utcnow()


def _insert_new(session: Session, user_id: str, values: dict[str, Any]) -> bool:
    """INSERT the claim unless the user has one (no error either way); whether it went in."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - the registry runs on SQLite and PostgreSQL
        return _insert_in_savepoint(session, user_id, values)
    statement = dialect_insert(SqlClaim).values(user_id=user_id, **values)
    statement = statement.on_conflict_do_nothing(index_elements=["user_id"])
    if dialect == "postgresql":  # psycopg reports no row count for ON CONFLICT: ask for the row
        return session.execute(statement.returning(SqlClaim.user_id)).first() is not None
    result: Any = session.execute(statement)
    return bool(result.rowcount)


def _insert_in_savepoint(session: Session, user_id: str, values: dict[str, Any]) -> bool:
    """A plain INSERT for other databases: a key conflict rolls back its savepoint."""
    from sqlalchemy.exc import IntegrityError

    try:
        with session.begin_nested():
            session.execute(insert(SqlClaim).values(user_id=user_id, **values))
    except IntegrityError:
        return False
    return True


def _update(session: Session, where: Any, values: dict[str, Any]) -> bool:
    """UPDATE the claims matching `where`; whether one matched."""
    result: Any = session.execute(update(SqlClaim).where(where).values(**values))
    return bool(result.rowcount)


def _holder_is_dead(host: str, pid: int) -> bool:
    """Whether a holder is a process of this machine (and pid namespace) that is gone.

    Only a sure answer is True: another machine, our own pid, a pid in use (even reused
    by an unrelated process) or one we may not signal all count as alive.
    """
    if host != host_id() or pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A process that exited and waits for its parent to reap it (Linux; False elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
