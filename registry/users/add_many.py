"""Add many users in one process: one embedder load, one `encode` call per chunk of users.

Each user is still committed on its own through `add_user` (blob first, then its row), so
an interruption loses at most the chunk being embedded and a re-run skips the users
already registered. A record that fails validation is an outcome, not an exception.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select

from mta.errors import one_line
from mta.registry.banks.versions import default_bank, resolve_bank
from mta.registry.context import RegistryContext
from mta.registry.errors import AlreadyExistsError, InvalidInputError
from mta.registry.jobs.outcomes import ADDED, FAILED, SKIPPED, UserOutcome
from mta.registry.models import SqlBank, SqlUser
from mta.registry.names import validate_user_id
from mta.registry.users.records import add_user

DEFAULT_CHUNK = 64


def add_users(
    ctx: RegistryContext,
    records: Sequence[Any],
    *,
    task: str,
    bank_ref: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    on_outcome: Callable[[UserOutcome, int, int], None] | None = None,
) -> list[UserOutcome]:
    """Register per-user records `{user_id, profile, query?}` under `task`'s bank.

    Args:
        records: per-user JSON objects (a LaMP per-user file's list).
        task: the task whose bank every user joins.
        bank_ref: bank version/alias to pin (default: the task's `prod` alias, else latest).
        chunk: users embedded per `Embedder.encode` call.
        on_outcome: called with (outcome, done, total) as each user lands.

    Returns:
        One outcome per record, in order: "added", "skipped" (the id is already
        registered) or "failed" (one-line reason).

    Raises:
        NotFoundError: the task has no bank (nothing could be added).
    """
    from mta.tasks import get_task

    task_obj = get_task(task)
    with ctx.read_session() as session:
        bank = resolve_bank(session, task, bank_ref) if bank_ref else default_bank(session, task)
        embedder = ctx.embedder(bank.embedder)
        existing = set(session.scalars(select(SqlUser.id)))
    outcomes: list[UserOutcome] = []
    for first in range(0, len(records), max(chunk, 1)):
        batch = records[first : first + max(chunk, 1)]
        prepared = [_prepare(record, task_obj, existing) for record in batch]
        vectors = _embed(embedder, [p for p in prepared if isinstance(p, _Ready)])
        for item in prepared:
            outcome = (
                _commit(ctx, item, task, bank_ref, vectors) if isinstance(item, _Ready) else item
            )
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome, len(outcomes), len(records))
    return outcomes


def only_task_with_bank(ctx: RegistryContext) -> str:
    """The task when exactly one task has a bank (what `user add --from` without --bank joins).

    Raises:
        InvalidInputError: no bank, or banks of several tasks.
    """
    with ctx.read_session() as session:
        tasks = sorted(set(session.scalars(select(SqlBank.task))))
    if len(tasks) != 1:
        known = ", ".join(tasks) or "none yet"
        raise InvalidInputError(f"give --bank TASK (tasks with a bank: {known})")
    return tasks[0]


class _Ready:
    """A validated record waiting for its embedding."""

    def __init__(self, user_id: str, record: dict[str, Any], texts: list[str]) -> None:
        self.user_id, self.record, self.texts = user_id, record, texts
        self.started = time.perf_counter()


def _prepare(record: Any, task_obj: Any, existing: set[str]) -> _Ready | UserOutcome:
    """Validate one record before any embedding: a ready record, or its skip/fail outcome."""
    from mta.lamp_data import validate_user

    start = time.perf_counter()
    raw_id = record.get("user_id") if isinstance(record, dict) else None
    user_id = "" if raw_id is None else str(raw_id)
    try:
        if not isinstance(record, dict):
            raise InvalidInputError(f"a user must be a JSON object, not {type(record).__name__}")
        validate_user_id(user_id)
        if user_id in existing:
            return UserOutcome(user_id, SKIPPED, time.perf_counter() - start, "already registered")
        validated = validate_user({**record}, require_gold=False, task=task_obj)
    except (ValueError, InvalidInputError) as error:
        return UserOutcome(user_id or "?", FAILED, time.perf_counter() - start, one_line(error))
    existing.add(user_id)  # a repeated id in the file is skipped, not embedded twice
    return _Ready(user_id, record, [task_obj.item_text(i) for i in validated["profile"]])


def _embed(embedder: Any, ready: list[_Ready]) -> dict[str, np.ndarray]:
    """Every ready user's vector from one `encode` call: the renormalized mean of its items."""
    from mta.embedding import normalize_rows

    texts = [text for item in ready for text in item.texts]
    if not texts:
        return {}
    rows = embedder.encode(texts)
    vectors, offset = {}, 0
    for item in ready:
        block = rows[offset : offset + len(item.texts)]
        offset += len(item.texts)
        vectors[item.user_id] = normalize_rows(block.mean(axis=0))  # as `user_embedding` does
    return vectors


def _commit(
    ctx: RegistryContext,
    item: _Ready,
    task: str,
    bank_ref: str | None,
    vectors: dict[str, np.ndarray],
) -> UserOutcome:
    """Store one user through `add_user` with its precomputed vector."""
    try:
        add_user(
            ctx,
            user_id=item.user_id,
            task=task,
            profile=item.record,
            bank_ref=bank_ref,
            vector=vectors[item.user_id],
        )
    except AlreadyExistsError as error:
        # Added meanwhile by another process: skipped; a pending deletion of the id: failed.
        status = SKIPPED if _registered(ctx, item.user_id) else FAILED
        return UserOutcome(item.user_id, status, time.perf_counter() - item.started, str(error))
    except Exception as error:  # noqa: BLE001 - one user's failure must not stop the job
        seconds = time.perf_counter() - item.started
        return UserOutcome(item.user_id, FAILED, seconds, one_line(error))
    return UserOutcome(item.user_id, ADDED, time.perf_counter() - item.started)


def _registered(ctx: RegistryContext, user_id: str) -> bool:
    """Whether a user row with this id exists."""
    with ctx.read_session() as session:
        return session.get(SqlUser, user_id) is not None
