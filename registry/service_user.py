"""Users: add (embed + pin a bank), fuse (recipe), adapt (train the stack), export, delete.

Every flow reads what it needs in a short transaction, does the slow work (embedding,
training, fusion) with no transaction open, writes blobs, then writes rows in one transaction.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mta.dtypes import torch_dtype
from mta.registry.blobrefs import (
    KIND_PROFILE,
    KIND_STACK,
    KIND_USER_EMBEDDING,
    put_blob,
    reassert_blobs,
    record_blob,
)
from mta.registry.context import MODEL_LOCK, RegistryContext
from mta.registry.entities import Export, Recipe, Stack, User, UserDetail
from mta.registry.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from mta.registry.identity import AdapterIdentity, identity_of
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
from mta.registry.service_bank import (
    ProgressFn,
    default_bank,
    latest_version,
    resolve_bank,
)
from mta.registry.service_delete import is_forgotten, user_cache_prefix
from mta.storage import BlobNotFoundError
from mta.storage.cache import ENTRY_MANIFEST

DEFAULT_TOP_K = 2


# --- lookups -------------------------------------------------------------------------------


def _get_user_row(session: Session, user_id: str) -> SqlUser:
    """The user's row, or NotFoundError."""
    row = session.get(SqlUser, user_id)
    if row is None:
        raise NotFoundError(f"no user {user_id!r}; add one with `mta user add`")
    return row


def _latest(session: Session, model: type[SqlRecipe] | type[SqlStack], user_id: str) -> Any:
    """The user's newest recipe or stack (highest id), or None."""
    query = select(model).where(model.user_id == user_id).order_by(model.id.desc()).limit(1)
    return session.scalars(query).first()


def _current_stack(session: Session, recipe: SqlRecipe) -> SqlStack | None:
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


def _version_of(session: Session, bank_id: int) -> int:
    """The version number of a bank row."""
    return session.get_one(SqlBank, bank_id).version


def _recipe_entity(session: Session, row: SqlRecipe) -> Recipe:
    """A recipe row as an entity."""
    bank = session.get_one(SqlBank, row.bank_id)
    return row.to_entity(task=bank.task, bank_version=bank.version)


def _stack_entity(session: Session, row: SqlStack) -> Stack:
    """A stack row as an entity, with its staleness against the task's latest bank."""
    bank = session.get_one(SqlBank, row.bank_id)
    stale = bank.version < latest_version(session, bank.task)
    return row.to_entity(task=bank.task, bank_version=bank.version, stale=stale)


def _canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes, so equal profiles share one content-addressed blob."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _load_profile(ctx: RegistryContext, digest: str) -> dict:
    """A user's stored profile record."""
    return json.loads(ctx.store.get_bytes(digest))


def _load_vector(ctx: RegistryContext, digest: str) -> np.ndarray:
    """A stored float32 embedding."""
    return np.frombuffer(ctx.store.get_bytes(digest), dtype=np.float32).copy()


def shot_indices(num_items: int, shots: int, seed: int) -> list[int]:
    """Which profile items are a user's shots: a seeded sample of `shots`, in profile order.

    `random.Random(seed).sample` over the item positions, sorted; all items when
    `shots >= num_items`. The same seed picks the same shots on every machine.
    """
    if shots < 1:
        raise InvalidInputError(f"shots must be at least 1, got {shots}")
    if shots >= num_items:
        return list(range(num_items))
    return sorted(random.Random(seed).sample(range(num_items), shots))


# --- add / get / list ----------------------------------------------------------------------


def add_user(
    ctx: RegistryContext,
    *,
    user_id: str,
    task: str,
    profile: dict | list,
    bank_ref: str | None = None,
) -> User:
    """Register a user: validate and store the profile, embed it, pin a bank version.

    Args:
        user_id: 1-128 chars of [A-Za-z0-9._@-], not "." or "..".
        task: LaMP task name.
        profile: a per-user record ({"profile": [...], "query": [...] optional}; its own
            `user_id`, if any, is replaced by `user_id`) or a bare list of profile items.
        bank_ref: bank version/alias to pin; default the task's `prod` alias, else the latest.

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
    with ctx.session() as session:
        if session.get(SqlUser, user_id) is not None:
            raise AlreadyExistsError(f"user {user_id!r} already exists")
        _refuse_pending_deletion(session, user_id)
        bank = resolve_bank(session, task, bank_ref) if bank_ref else default_bank(session, task)
        bank_id, bank_version, embedder_name = bank.id, bank.version, bank.embedder
    embedder = ctx.embedder(embedder_name)
    items = validated["profile"]
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
    with ctx.session() as session:
        row = _get_user_row(session, user_id)
        base = row.to_entity(bank_version=_version_of(session, row.bank_id))
        recipe = _latest(session, SqlRecipe, user_id)
        stack = _current_stack(session, recipe) if recipe is not None else None
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
            recipe=_recipe_entity(session, recipe) if recipe is not None else None,
            stack=_stack_entity(session, stack) if stack is not None else None,
            num_recipes=int(count[SqlRecipe]),
            num_stacks=int(count[SqlStack]),
            bytes=int(size or 0),
        )


def list_users(ctx: RegistryContext, *, task: str | None = None) -> list[User]:
    """Users by id, optionally one task's."""
    with ctx.session() as session:
        query = select(SqlUser, SqlBank.version).join(SqlBank, SqlBank.id == SqlUser.bank_id)
        if task is not None:
            query = query.where(SqlUser.task == task)
        rows = session.execute(query.order_by(SqlUser.id)).all()
        return [user.to_entity(bank_version=version) for user, version in rows]


# --- fuse ----------------------------------------------------------------------------------


def fuse_user(
    ctx: RegistryContext,
    user_id: str,
    *,
    top_k: int = DEFAULT_TOP_K,
    method: str = "cat",
    weight_rule: str = "proportional",
    temperature: float = 1.0,
    rank: int | None = None,
    bank_ref: str | None = None,
    if_absent: bool = False,
) -> Recipe:
    """Find the user's nearest anchors, weight them and store the recipe (never the adapter).

    Args:
        user_id: a registered user.
        top_k: anchors to fuse (capped at the bank's anchor count).
        method: fusion method ("cat" exact, "svd", "factorwise").
        weight_rule: "proportional" or "softmax" (with `temperature`).
        rank: target rank for "svd".
        bank_ref: fuse against this version/alias of the user's task instead of the pinned one.
        if_absent: keep the user's recipe if one appeared meanwhile (concurrent adapts of a
            user without a recipe then share the first one instead of each writing its own).

    Returns:
        The new (now current) recipe with anchors, cosine scores and weights, best first.
    """
    from mta.fusion import get_fusion
    from mta.index import AnchorIndex
    from mta.weighting import compute_weights, get_weight_rule

    get_fusion(method)
    get_weight_rule(weight_rule)
    if top_k < 1:
        raise InvalidInputError(f"top_k must be at least 1, got {top_k}")
    if rank is not None and rank < 1:
        raise InvalidInputError(f"rank must be at least 1, got {rank}")
    with ctx.session() as session:
        user = _get_user_row(session, user_id)
        bank = (
            resolve_bank(session, user.task, bank_ref)
            if bank_ref
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

        items = _load_profile(ctx, profile_blob)["profile"]
        task_obj = get_task(task)
        vector = user_embedding(ctx.embedder(bank_embedder), [task_obj.item_text(i) for i in items])
    index = AnchorIndex.from_bytes(ctx.store.get_bytes(index_blob))
    hits = index.query(vector, min(top_k, int(num_anchors or 0)))
    weights = compute_weights([score for _, score in hits], weight_rule, temperature=temperature)
    anchors = [
        {"anchor_id": anchor_id, "score": float(score), "weight": float(weight)}
        for (anchor_id, score), weight in zip(hits, weights, strict=True)
    ]
    params: dict[str, Any] = {"top_k": top_k, "temperature": temperature}
    if rank is not None:
        params["rank"] = rank
    with ctx.session() as session:
        # Lock the user row (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers).
        session.scalars(select(SqlUser).where(SqlUser.id == user_id).with_for_update()).first()
        existing = _latest(session, SqlRecipe, user_id) if if_absent else None
        if existing is not None:
            return _recipe_entity(session, existing)
        row = SqlRecipe(
            user_id=user_id,
            bank_id=bank_id,
            anchors=anchors,
            method=method,
            weight_rule=weight_rule,
            params=params,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return _recipe_entity(session, row)


def _recipe_inputs(session: Session, recipe: SqlRecipe) -> list[tuple[str, float]]:
    """(adapter digest, weight) of each anchor in a recipe."""
    rows = session.execute(
        select(SqlAnchor.anchor_id, SqlAnchor.adapter_blob).where(
            SqlAnchor.bank_id == recipe.bank_id
        )
    ).all()
    digest_of = dict(rows)
    missing = [a["anchor_id"] for a in recipe.anchors if a["anchor_id"] not in digest_of]
    if missing:
        raise NotFoundError(f"recipe {recipe.id} names unknown anchors {', '.join(missing)}")
    return [(digest_of[a["anchor_id"]], float(a["weight"])) for a in recipe.anchors]


def materialize_fused(
    ctx: RegistryContext, inputs: list[tuple[str, float]], method: str, rank: int | None
) -> Any:
    """Rebuild a fused adapter from anchor blobs and weights (in memory only)."""
    from mta.fusion import fuse
    from mta.peft_io import adapter_from_bytes

    adapters = [adapter_from_bytes(ctx.store.get_bytes(digest)) for digest, _ in inputs]
    return fuse(adapters, [w for _, w in inputs], method=method, rank=rank)


# --- adapt ---------------------------------------------------------------------------------


def _adapt_inputs(ctx: RegistryContext, user_id: str) -> dict[str, Any] | None:
    """What training a stack needs, read in one session; None when the user has no recipe."""
    with ctx.session() as session:
        user = _get_user_row(session, user_id)
        recipe = _latest(session, SqlRecipe, user_id)
        if recipe is None:
            return None
        bank = session.get_one(SqlBank, recipe.bank_id)
        return {
            "recipe_id": recipe.id,
            "bank_id": bank.id,
            "anchors": _recipe_inputs(session, recipe),
            "method": recipe.method,
            "fuse_rank": recipe.params.get("rank"),
            "base_model": bank.base_model,
            "modules": list(bank.target_modules),
            "task": user.task,
            "profile_blob": user.profile_blob,
        }


def adapt_user(
    ctx: RegistryContext,
    user_id: str,
    *,
    shots: int,
    rank: int = 1,
    epochs: int = 3,
    lr: float = 1e-3,
    seed: int = 0,
    dtype: str = "fp16",
    batch_size: int = 4,
    max_steps: int | None = None,
    progress: ProgressFn | None = None,
) -> Stack:
    """Train the user's stack on `shots` profile items on top of their frozen fused adapter.

    Fuses first (defaults) when the user has no recipe. The shots are `shot_indices(n, shots,
    seed)`; training examples are `profile_examples` over the shots (leave-one-out: each shot
    a target, the other shots its history).

    Args:
        user_id: a registered user.
        shots: number of profile items to train on.
        rank, epochs, lr, seed, batch_size, max_steps: the stack's TrainConfig.
        dtype: stored precision of the stack: "fp16" (default), "bf16" or "fp32".
        progress: called as ("train", step, total_steps).

    Returns:
        The stored (now current) stack.
    """
    from mta.tasks import get_task, profile_examples
    from mta.training import TrainConfig, planned_steps, train_lora

    torch_dtype(dtype)  # an unknown name fails before any work
    inputs = _adapt_inputs(ctx, user_id)
    if inputs is None:
        fuse_user(ctx, user_id, if_absent=True)
        inputs = _adapt_inputs(ctx, user_id)
    if inputs is None:  # the recipe went with a deletion that ran meanwhile
        raise NotFoundError(f"user {user_id!r} has no recipe; run `mta user fuse`")
    items = _load_profile(ctx, inputs["profile_blob"])["profile"]
    chosen = shot_indices(len(items), shots, seed)
    examples = profile_examples(get_task(inputs["task"]), [items[i] for i in chosen])
    config = TrainConfig(
        rank=rank,
        epochs=epochs,
        lr=lr,
        seed=seed,
        batch_size=batch_size,
        target_modules=inputs["modules"],
        max_steps=max_steps,
    )
    config.validate()
    fused = materialize_fused(ctx, inputs["anchors"], inputs["method"], inputs["fuse_rank"])
    model, tokenizer = ctx.base_model(inputs["base_model"])
    total = planned_steps(len(examples), config)

    def on_step(step: int, _loss: float) -> None:
        if progress is not None:
            progress("train", step, total)

    with MODEL_LOCK:
        stack, losses = train_lora(
            model, tokenizer, examples, config, frozen=fused, progress=False, on_step=on_step
        )
    from mta.peft_io import adapter_to_bytes

    data = adapter_to_bytes(stack, dtype=torch_dtype(dtype))
    blob = put_blob(ctx, data, KIND_STACK)
    train_config = {
        **{k: v for k, v in vars(config).items()},
        "shots": shots,
        "shot_indices": chosen,
        "examples": len(examples),
        "steps": len(losses),
        "losses": [float(x) for x in losses],
    }
    with ctx.session() as session:
        record_blob(session, blob)
        row = SqlStack(
            user_id=user_id,
            recipe_id=inputs["recipe_id"],
            bank_id=inputs["bank_id"],
            blob=blob.digest,
            rank=rank,
            dtype=dtype,
            bytes=len(data),
            train_config=train_config,
            final_loss=float(losses[-1]) if losses else None,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        entity = _stack_entity(session, row)
    reassert_blobs(ctx, [blob])
    return entity


# --- export --------------------------------------------------------------------------------


def cache_key(identity: AdapterIdentity, **options: Any) -> str:
    """Export-cache key: a per-user prefix (so `delete_user` finds the entries) + the digest.

    The digest is the adapter identity's with the export options (`max_rank`, `dtype`,
    `base_model_name`): the same key means the same bytes, whatever database the ids come from.
    """
    return user_cache_prefix(identity.user_id) + identity.digest(**options)[:32]


def _read_identity(session: Session, user_id: str) -> AdapterIdentity:
    """The user's adapter identity from their current recipe and stack rows."""
    _get_user_row(session, user_id)
    recipe = _latest(session, SqlRecipe, user_id)
    if recipe is None:
        raise NotFoundError(f"user {user_id!r} has no recipe yet; run `mta user fuse`")
    stack = _current_stack(session, recipe)
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
        _recipe_entity(session, recipe),
        _stack_entity(session, stack) if stack is not None else None,
        digests,
        session.get_one(SqlBank, recipe.bank_id).base_model,
    )


def adapter_identity(ctx: RegistryContext, user_id: str) -> AdapterIdentity:
    """What the user's exported adapter is made of now (see `mta.registry.identity`)."""
    with ctx.session() as session:
        return _read_identity(session, user_id)


def export_user(
    ctx: RegistryContext,
    user_id: str,
    out_dir: Path | None,
    *,
    max_rank: int | None = None,
    dtype: str = "fp32",
    base_model_name: str | None = None,
) -> Export:
    """Materialize the user's adapter (fused + current stack) as one PEFT LoRA folder.

    The current recipe is the latest; the current stack is the newest one trained on it (a
    stack is only valid on its own fused delta). A user without one gets the fused adapter
    alone. The folder is cached under the adapter identity (see `cache_key`) and copied to
    `out_dir` when given.

    Args:
        user_id: a registered user with a recipe.
        out_dir: destination folder (created; files overwritten), or None for the cache path.
        max_rank: compress to this rank with the truncated SVD (engines that cap LoRA rank).
        dtype: tensor precision of the written folder ("fp32" default, "fp16", "bf16").
        base_model_name: written as `base_model_name_or_path` instead of the bank's base
            model (serving engines match it against the model they serve).

    Raises:
        NotFoundError: the user has no recipe yet (run `mta user fuse`).
    """
    tensor_dtype = torch_dtype(dtype)
    if max_rank is not None and max_rank < 1:
        raise InvalidInputError(f"max_rank must be at least 1, got {max_rank}")
    with ctx.session() as session:
        identity = _read_identity(session, user_id)
    options = {"max_rank": max_rank, "dtype": dtype, "base_model_name": base_model_name}
    key = cache_key(identity, **options)
    cache = ctx.adapter_cache
    cached = cache.get(key)
    from_cache = cached is not None
    try:
        if cached is None:
            cached, rank = _materialize_into_cache(ctx, identity, key, tensor_dtype, **options)
        else:
            _verify_sources(ctx, identity)
            rank = _exported_rank(cached)
    except BlobNotFoundError:
        _refuse_if_forgotten(ctx, user_id)  # deleted meanwhile: not found, not an integrity error
        raise
    _refuse_if_forgotten(ctx, user_id)  # a deletion that raced us must not find our entry left
    path = cached
    if out_dir is not None:
        path = Path(out_dir)
        shutil.copytree(
            cached, path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(ENTRY_MANIFEST)
        )
    size = sum(
        p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.name != ENTRY_MANIFEST
    )
    return Export(
        user_id=user_id,
        path=Path(path),
        cache_path=Path(cached),
        from_cache=from_cache,
        rank=rank,
        max_rank=max_rank,
        recipe_id=identity.recipe_id,
        stack_id=identity.stack_id,
        bytes=size,
    )


def _materialize_into_cache(
    ctx: RegistryContext,
    identity: AdapterIdentity,
    key: str,
    tensor_dtype: Any,
    *,
    max_rank: int | None,
    dtype: str,
    base_model_name: str | None,
) -> tuple[Path, int]:
    """Fuse, stack and write the identity's PEFT folder into the export cache."""
    from mta.export import export_adapter
    from mta.peft_io import adapter_from_bytes, save_peft_adapter

    del dtype  # part of the key; the tensors use tensor_dtype
    fused = materialize_fused(
        ctx, list(identity.anchors), identity.method, identity.params.get("rank")
    )
    stack = adapter_from_bytes(ctx.store.get_bytes(identity.stack)) if identity.stack else None
    adapter = export_adapter(fused, stack, max_rank=max_rank)
    # Staged inside the cache under the key, so deleting the user finds a crashed build too.
    with ctx.adapter_cache.staging(key) as tmp:
        folder = save_peft_adapter(
            adapter,
            Path(tmp) / "adapter",
            dtype=tensor_dtype,
            base_model=base_model_name or identity.base_model,
        )
        cached = ctx.adapter_cache.put(key, folder)
    return cached, max(adapter.ranks().values())


def _verify_sources(ctx: RegistryContext, identity: AdapterIdentity) -> None:
    """Re-hash the blobs a cached export was built from: a warm cache must not hide damage."""
    for digest in [d for d, _ in identity.anchors] + ([identity.stack] if identity.stack else []):
        ctx.store.verify(digest)


def _refuse_if_forgotten(ctx: RegistryContext, user_id: str) -> None:
    """NotFoundError (after dropping their cache entries) if the user is gone or being deleted."""
    with ctx.session() as session:
        forgotten = is_forgotten(session, user_id)
    if forgotten:
        ctx.adapter_cache.discard_prefix(user_cache_prefix(user_id))
        raise NotFoundError(f"no user {user_id!r}")


def _exported_rank(folder: Path) -> int:
    """The largest per-module rank written in a PEFT folder's config."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    ranks = [
        int(config.get("r", 0)),
        *(int(r) for r in (config.get("rank_pattern") or {}).values()),
    ]
    return max(ranks)
