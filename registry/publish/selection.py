"""Which users a publish round covers: a task, named ids, and users adapted recently.

"Recently" is when the user's current adapter was made (`adapter_times`): the creation of
the current stack, else of the latest recipe (a fused user without a stack). The registry
records no adapter fetches, so recency of use is not known here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

from mta.registry.banks.versions import list_banks
from mta.registry.context import RegistryContext
from mta.registry.errors import InvalidInputError, NotFoundError
from mta.registry.models import SqlRecipe, SqlStack, as_utc
from mta.registry.publish.request import PublishRequest
from mta.registry.users.records import list_users


def adapter_times(ctx: RegistryContext) -> dict[str, datetime]:
    """user id -> when their current adapter was made (users without a recipe are absent)."""
    latest = (
        select(SqlRecipe.user_id, func.max(SqlRecipe.id).label("recipe_id"))
        .group_by(SqlRecipe.user_id)
        .subquery()
    )
    with ctx.read_session() as session:
        times = dict(
            session.execute(
                select(SqlRecipe.user_id, SqlRecipe.created_at).join(
                    latest, SqlRecipe.id == latest.c.recipe_id
                )
            )
            .tuples()
            .all()
        )
        stacks = session.execute(
            select(SqlStack.user_id, func.max(SqlStack.created_at))
            .join(latest, SqlStack.recipe_id == latest.c.recipe_id)
            .group_by(SqlStack.user_id)
        ).tuples()
        times.update(stacks.all())
    return {user_id: as_utc(moment) for user_id, moment in times.items()}


def publish_selection(
    ctx: RegistryContext, request: PublishRequest, times: dict[str, datetime], now: datetime
) -> tuple[list[str], set[str]]:
    """(selected user ids, sorted; every user id in the registry).

    The selection is every user of `request.task` when nothing narrows it, else the union of
    `user_ids` and the users adapted within `active_since`, limited to the task.

    Raises:
        NotFoundError: the task has no bank, or a named user does not exist.
        InvalidInputError: a named user belongs to another task.
    """
    task = request.task
    if task is not None and not list_banks(ctx, task=task):
        raise NotFoundError(f"no bank for task {task!r}")
    users = {user.user_id: user for user in list_users(ctx)}
    in_task = {u for u, e in users.items() if task is None or e.task == task}
    if request.selects_all:
        return sorted(in_task), set(users)
    named = list(request.user_ids or ())
    unknown = [u for u in named if u not in users]
    if unknown:
        raise NotFoundError(f"no such user: {', '.join(map(repr, unknown))}")
    other = [u for u in named if u not in in_task]
    if other:
        raise InvalidInputError(f"not users of task {task!r}: {', '.join(map(repr, other))}")
    selected = set(named)
    if request.active_since is not None:
        since = now - timedelta(seconds=request.active_since)
        selected |= {u for u in in_task if u in times and times[u] >= since}
    return sorted(selected), set(users)
