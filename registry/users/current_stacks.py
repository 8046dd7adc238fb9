"""Which bank version each user's current stack was trained on (staleness, bulk selection).

A user's current stack is the newest stack trained on their latest recipe; it is stale
when its bank version is older than the task's latest. `maintenance.report` counts stale
stacks and `jobs.bulk` selects users by it.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mta.registry.models import SqlRecipe, SqlStack


def current_stack_banks(session: Session) -> dict[str, int]:
    """user id -> bank id of the user's current stack (newest on their latest recipe).

    Users without a current stack (never adapted, or re-fused since) are absent.
    """
    return {user_id: bank_id for user_id, (_, bank_id, _) in _current(session).items()}


def current_stack_formats(session: Session) -> dict[str, int]:
    """Storage format -> how many users' current stacks are stored in it."""
    counts: dict[str, int] = {}
    for _, _, dtype in _current(session).values():
        counts[dtype] = counts.get(dtype, 0) + 1
    return dict(sorted(counts.items()))


def _current(session: Session) -> dict[str, tuple[int, int, str]]:
    """user id -> (stack id, bank id, format) of the user's current stack."""
    latest_recipe = dict(
        session.execute(
            select(SqlRecipe.user_id, func.max(SqlRecipe.id)).group_by(SqlRecipe.user_id)
        )
        .tuples()
        .all()
    )
    current: dict[str, tuple[int, int, str]] = {}
    rows = session.execute(
        select(SqlStack.user_id, SqlStack.recipe_id, SqlStack.id, SqlStack.bank_id, SqlStack.dtype)
    )
    for user_id, recipe_id, stack_id, bank_id, dtype in rows:
        if latest_recipe.get(user_id) == recipe_id and stack_id > current.get(user_id, (0,))[0]:
            current[user_id] = (stack_id, bank_id, dtype)
    return current
