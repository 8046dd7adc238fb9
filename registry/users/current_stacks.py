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
    latest_recipe = dict(
        session.execute(
            select(SqlRecipe.user_id, func.max(SqlRecipe.id)).group_by(SqlRecipe.user_id)
        )
        .tuples()
        .all()
    )
    current: dict[str, tuple[int, int]] = {}
    rows = session.execute(
        select(SqlStack.user_id, SqlStack.recipe_id, SqlStack.id, SqlStack.bank_id)
    )
    for user_id, recipe_id, stack_id, bank_id in rows:
        if latest_recipe.get(user_id) == recipe_id and stack_id > current.get(user_id, (0, 0))[0]:
            current[user_id] = (stack_id, bank_id)
    return {user_id: bank_id for user_id, (_, bank_id) in current.items()}
