"""Users: add (embed + pin a bank), get, list, fuse (recipe), adapt (train the stack).

Every flow reads what it needs in a short transaction, does the slow work (embedding,
training, fusion) with no transaction open, writes blobs, then writes rows in one transaction.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mta.registry.banks.versions import (
    default_bank,
    resolve_bank,
)
from mta.registry.blobrefs import (
    KIND_PROFILE,
    KIND_USER_EMBEDDING,
    put_blob,
    reassert_blobs,
    record_blob,
)
from mta.registry.context import RegistryContext
from mta.registry.entities import Recipe, User, UserDetail
from mta.registry.errors import AlreadyExistsError, InvalidInputError
from mta.registry.models import (
    SqlAnchor,
    SqlBank,
    SqlBlob,
    SqlDeletion,
    SqlRecipe,
    SqlStack,
    SqlUser,
    utcnow,
)
from mta.registry.names import validate_user_id
from mta.registry.requests import FuseRequest
from mta.registry.users.rows import (
    current_stack,
    get_user_row,
    latest_row,
    recipe_entity,
    stack_entity,
    version_of,
)


def _canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes, so equal profiles share one content-addressed blob."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_profile(ctx: RegistryContext, digest: str) -> dict:
    """A user's stored profile record."""
    return json.loads(ctx.store.get_bytes(digest))


def _load_vector(ctx: RegistryContext, digest: str) -> np.ndarray:
    """A stored float32 embedding."""
    return np.frombuffer(ctx.store.get_bytes(digest), dtype=np.float32).copy()


# --- add / get / list ----------------------------------------------------------------------


def add_user(
    ctx: RegistryContext,
    *,
    user_id: str,
    task: str,
    profile: dict | list,
    bank_ref: str | None = None,
    vector: np.ndarray | None = None,
) -> User:
    """Register a user: validate and store the profile, embed it, pin a bank version.

    Args:
        user_id: 1-128 chars of [A-Za-z0-9._@-], not "." or "..".
        task: LaMP task name.
        profile: a per-user record ({"profile": [...], "query": [...] optional}; its own
            `user_id`, if any, is replaced by `user_id`) or a bare list of profile items.
        bank_ref: bank version/alias to pin; default the task's `prod` alias, else the latest.
        vector: the user's embedding, already computed by the bank's embedder (bulk adds
            embed many users in one batch); None embeds the profile here.

    Raises:
        InvalidInputError: bad id or profile (e.g. empty).
        AlreadyExistsError: the id is taken.
        NotFoundError: the task has no bank.
    """
    from mta.embedding import user_embedding
    from mta.lamp_data import validate_user
    from mta.tasks import get_task

    validate_user_id(user_id)
    task_obj = get_task(task)
    record = {"profile": profile} if isinstance(profile, list) else profile
    if not isinstance(record, dict):
        raise InvalidInputError(f"profile of {user_id!r} must be a JSON object or a list of items")
    try:
        validated = validate_user({**record, "user_id": user_id}, require_gold=False, task=task_obj)
    except ValueError as error:
        raise InvalidInputError(str(error)) from error
    with ctx.read_session() as session:
        if session.get(SqlUser, user_id) is not None:
            raise AlreadyExistsError(f"user {user_id!r} already exists")
        _refuse_pending_deletion(session, user_id)
        bank = resolve_bank(session, task, bank_ref) if bank_ref else default_bank(session, task)
        bank_id, bank_version, embedder_name = bank.id, bank.version, bank.embedder
    embedder = ctx.embedder(embedder_name)
    items = validated["profile"]
    if vector is None:
        vector = user_embedding(embedder, [task_obj.item_text(i) for i in items])
    profile_blob = put_blob(ctx, _canonical_json(validated), KIND_PROFILE)
    vector_blob = put_blob(ctx, np.asarray(vector, np.float32).tobytes(), KIND_USER_EMBEDDING)
    try:
        with ctx.session() as session:
            _refuse_pending_deletion(session, user_id)
            record_blob(session, profile_blob)
            record_blob(session, vector_blob)
            row = SqlUser(
                id=user_id,
                task=task,
                bank_id=bank_id,
                profile_blob=profile_blob.digest,
                embedding_blob=vector_blob.digest,
                embedder=embedder.name,
                profile_items=len(items),
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            user = row.to_entity(bank_version=bank_version)
    except AlreadyExistsError as error:
        raise AlreadyExistsError(f"user {user_id!r} already exists") from error
    reassert_blobs(ctx, [profile_blob, vector_blob])
    return user


def _refuse_pending_deletion(session: Session, user_id: str) -> None:
    """AlreadyExistsError while a deletion of this id has not finished."""
    if session.get(SqlDeletion, user_id) is not None:
        raise AlreadyExistsError(
            f"a deletion of user {user_id!r} is pending; finish it with "
            f"`mta user delete {user_id}` (or `mta gc`) before adding the id again"
        )


def get_user(ctx: RegistryContext, user_id: str) -> UserDetail:
    """A user with their current recipe and stack and the bytes they occupy."""
    with ctx.read_session() as session:
        row = get_user_row(session, user_id)
        base = row.to_entity(bank_version=version_of(session, row.bank_id))
        recipe = latest_row(session, SqlRecipe, user_id)
        stack = current_stack(session, recipe) if recipe is not None else None
        stack_blobs = session.scalars(
            select(SqlStack.blob).where(SqlStack.user_id == user_id)
        ).all()
        digests = {row.profile_blob, row.embedding_blob, *stack_blobs}
        size = session.scalar(select(func.sum(SqlBlob.size)).where(SqlBlob.digest.in_(digests)))
        count = {
            m: session.scalar(select(func.count()).where(m.user_id == user_id)) or 0
            for m in (SqlRecipe, SqlStack)
        }
        return UserDetail(
            **{f: getattr(base, f) for f in User.__dataclass_fields__},
            recipe=recipe_entity(session, recipe) if recipe is not None else None,
            stack=stack_entity(session, stack) if stack is not None else None,
            num_recipes=int(count[SqlRecipe]),
            num_stacks=int(count[SqlStack]),
            bytes=int(size or 0),
        )


def list_users(ctx: RegistryContext, *, task: str | None = None) -> list[User]:
    """Users by id, optionally one task's."""
    with ctx.read_session() as session:
        query = select(SqlUser, SqlBank.version).join(SqlBank, SqlBank.id == SqlUser.bank_id)
        if task is not None:
            query = query.where(SqlUser.task == task)
        rows = session.execute(query.order_by(SqlUser.id)).all()
        return [user.to_entity(bank_version=version) for user, version in rows]


# --- fuse ----------------------------------------------------------------------------------


def fuse_user(
    ctx: RegistryContext,
    user_id: str,
    request: FuseRequest | None = None,
    *,
    if_absent: bool = False,
) -> Recipe:
    """Find the user's nearest anchors, weight them and store the recipe (never the adapter).

    Args:
        user_id: a registered user.
        request: top-k (capped at the bank's anchor count), fusion method, weight rule,
            svd rank and bank; default `FuseRequest()`.
        if_absent: keep the user's recipe if one appeared meanwhile (concurrent adapts of a
            user without a recipe then share the first one instead of each writing its own).

    Returns:
        The new (now current) recipe with anchors, cosine scores and weights, best first.
    """
    request = (request or FuseRequest()).validate()
    bank_id, anchors = _retrieve_anchors(ctx, user_id, request)
    params: dict[str, Any] = {"top_k": request.top_k, "temperature": request.temperature}
    if request.rank is not None:
        params["rank"] = request.rank
    with ctx.session() as session:
        # Lock the user row (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers).
        session.scalars(select(SqlUser).where(SqlUser.id == user_id).with_for_update()).first()
        existing = latest_row(session, SqlRecipe, user_id) if if_absent else None
        if existing is not None:
            return recipe_entity(session, existing)
        row = SqlRecipe(
            user_id=user_id,
            bank_id=bank_id,
            anchors=anchors,
            method=request.method,
            weight_rule=request.weight_rule,
            params=params,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return recipe_entity(session, row)


def _retrieve_anchors(
    ctx: RegistryContext, user_id: str, request: FuseRequest
) -> tuple[int, list[dict[str, Any]]]:
    """(bank id, [{anchor_id, score, weight}] best first): the user's nearest anchors."""
    from mta.index import AnchorIndex
    from mta.weighting import compute_weights

    with ctx.read_session() as session:
        user = get_user_row(session, user_id)
        bank = (
            resolve_bank(session, user.task, request.bank_ref)
            if request.bank_ref
            else session.get_one(SqlBank, user.bank_id)
        )
        bank_id, index_blob, bank_embedder = bank.id, bank.index_blob, bank.embedder
        task, profile_blob = user.task, user.profile_blob
        embedding_blob, user_embedder = user.embedding_blob, user.embedder
        num_anchors = session.scalar(select(func.count()).where(SqlAnchor.bank_id == bank.id))
    if user_embedder == bank_embedder:
        vector = _load_vector(ctx, embedding_blob)
    else:
        # The bank was embedded with another model: compare like with like, from the profile.
        from mta.embedding import user_embedding
        from mta.tasks import get_task

        items = load_profile(ctx, profile_blob)["profile"]
        task_obj = get_task(task)
        vector = user_embedding(ctx.embedder(bank_embedder), [task_obj.item_text(i) for i in items])
    index = AnchorIndex.from_bytes(ctx.store.get_bytes(index_blob))
    hits = index.query(vector, min(request.top_k, int(num_anchors or 0)))
    weights = compute_weights(
        [score for _, score in hits], request.weight_rule, temperature=request.temperature
    )
    anchors = [
        {"anchor_id": anchor_id, "score": float(score), "weight": float(weight)}
        for (anchor_id, score), weight in zip(hits, weights, strict=True)
    ]
    return bank_id, anchors
