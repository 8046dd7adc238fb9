"""Reading a user's rows: the lookups the user, adapt, export and publish services share."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mta.registry.banks.versions import latest_version
from mta.registry.entities import Recipe, Stack
from mta.registry.errors import NotFoundError
from mta.registry.identity import AdapterIdentity, identity_of
from mta.registry.models import SqlAnchor, SqlBank, SqlRecipe, SqlStack, SqlUser


def get_user_row(session: Session, user_id: str) -> SqlUser:
    """The user's row, or NotFoundError."""
    row = session.get(SqlUser, user_id)
    if row is None:
        raise NotFoundError(f"no user {user_id!r}; add one with `mta user add`")
    return row


def latest_row(session: Session, model: type[SqlRecipe] | type[SqlStack], user_id: str) -> Any:
    """The user's newest recipe or stack (highest id), or None."""
    query = select(model).where(model.user_id == user_id).order_by(model.id.desc()).limit(1)
    return session.scalars(query).first()


def current_stack(session: Session, recipe: SqlRecipe) -> SqlStack | None:
    """The user's current stack: the newest one trained on their current (latest) recipe.

    A stack is only valid on the fused delta it was trained on, so re-fusing a user leaves
    them without a current stack until `adapt_user` runs again.
    """
    query = (
        select(SqlStack)
        .where(SqlStack.user_id == recipe.user_id, SqlStack.recipe_id == recipe.id)
        .order_by(SqlStack.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def version_of(session: Session, bank_id: int) -> int:
    """The version number of a bank row."""
    return session.get_one(SqlBank, bank_id).version


def recipe_entity(session: Session, row: SqlRecipe) -> Recipe:
    """A recipe row as an entity."""
    bank = session.get_one(SqlBank, row.bank_id)
    return row.to_entity(task=bank.task, bank_version=bank.version)


def stack_entity(session: Session, row: SqlStack) -> Stack:
    """A stack row as an entity, with its staleness against the task's latest bank."""
    bank = session.get_one(SqlBank, row.bank_id)
    stale = bank.version < latest_version(session, bank.task)
    return row.to_entity(task=bank.task, bank_version=bank.version, stale=stale)


def read_identity(session: Session, user_id: str) -> AdapterIdentity:
    """The user's adapter identity, read once from their current recipe and stack rows.

    Raises:
        NotFoundError: no such user, no recipe yet, or a recipe naming an unknown anchor.
    """
    get_user_row(session, user_id)
    recipe = latest_row(session, SqlRecipe, user_id)
    if recipe is None:
        raise NotFoundError(f"user {user_id!r} has no recipe yet; run `mta user fuse`")
    return identity_of_recipe(session, recipe)


def identity_of_recipe(session: Session, recipe: SqlRecipe) -> AdapterIdentity:
    """The adapter identity of a user's current recipe row and the stack trained on it."""
    stack = current_stack(session, recipe)
    digests = dict(
        session.execute(
            select(SqlAnchor.anchor_id, SqlAnchor.adapter_blob).where(
                SqlAnchor.bank_id == recipe.bank_id
            )
        )
        .tuples()
        .all()
    )
    return identity_of(
        recipe_entity(session, recipe),
        (stack.blob, stack.id) if stack is not None else None,
        digests,
        session.get_one(SqlBank, recipe.bank_id).base_model,
    )
