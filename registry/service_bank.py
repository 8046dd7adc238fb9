"""Bank versions: build (select anchors, train meta-LoRAs), push (external PEFT LoRAs), list, alias.

Bank adapters are stored as fp16 safetensors blobs (half the bytes of fp32; fine-tuned LoRA
factors lose nothing that matters at that precision). Fusion is exact with respect to the
stored fp16 factors: the recipe rebuilds the same delta every time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mta.dtypes import torch_dtype
from mta.registry.blobrefs import (
    KIND_ANCHOR_ADAPTER,
    KIND_ANCHOR_EMBEDDING,
    KIND_BANK_INDEX,
    PendingBlob,
    put_blob,
    reassert_blobs,
    record_blob,
)
from mta.registry.context import MODEL_LOCK, RegistryContext
from mta.registry.entities import BankDetail, BankVersion
from mta.registry.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from mta.registry.models import SqlAnchor, SqlBank, SqlBankAlias, SqlBlob, utcnow
from mta.registry.names import validate_alias

ProgressFn = Callable[[str, int, int], None]
ANCHOR_DATA_MODES = ("user", "cluster")
BANK_ADAPTER_DTYPE = "fp16"
PROD_ALIAS = "prod"
_PUBLISH_RETRIES = 5


@dataclass
class AnchorPayload:
    """One anchor ready to publish: adapter bytes and embedding, before any row exists."""

    anchor_id: str
    adapter_bytes: bytes
    embedding: np.ndarray
    history_length: int
    cluster_size: int


def _report(progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
    """Call the optional progress callback."""
    if progress is not None:
        progress(stage, done, total)


def base_model_name(spec: str | None) -> str:
    """The base-model name recorded in a bank: the alias as given, a local path made absolute."""
    from mta.base_model import DEFAULT_BASE_MODEL, resolve_base_model

    name = spec or os.environ.get("MTA_BASE_MODEL") or DEFAULT_BASE_MODEL
    if name.lower() == DEFAULT_BASE_MODEL:
        return DEFAULT_BASE_MODEL
    return resolve_base_model(name)


def check_model_specs(base_model: str | None, embedder: str | None) -> str:
    """Resolve the base model and embedder specs without loading weights (cheap checks first).

    Returns:
        The base-model name a bank records (see `base_model_name`).

    Raises:
        MtaError: a path-like spec that does not exist, a folder holding no model, or the
            bundled default's wheel missing. Hub ids are only checked when loaded.
    """
    from mta.base_model import resolve_base_model
    from mta.embedding import resolve_embedder
    from mta.errors import MtaError

    model_name = base_model_name(base_model)
    location = Path(resolve_base_model(model_name))
    if location.is_dir() and not (location / "config.json").is_file():
        raise MtaError(f"base model folder {location} has no config.json")
    name, where, local_only = resolve_embedder(embedder)
    if local_only and not any((Path(where) / f).is_file() for f in ("modules.json", "config.json")):
        raise MtaError(f"embedder folder {where} holds no sentence-transformers model")
    if not local_only and name.startswith((".", "/", "~")):
        raise MtaError(f"embedder path {name!r} does not exist")
    return model_name


def _check_enough_candidates(users: Sequence[dict], anchors: int, min_history: int) -> None:
    """Refuse a build whose users cannot yield `anchors` anchors, before embedding them."""
    eligible = sum(len(u["profile"]) >= min_history for u in users)
    if anchors > eligible:
        raise InvalidInputError(
            f"cannot select {anchors} anchors: only {eligible} of {len(users)} candidates "
            f"have at least {min_history} history items (lower --min-history or --anchors)"
        )


# --- lookups shared with the user service -------------------------------------------------


def latest_version(session: Session, task: str) -> int:
    """Highest published version of `task` (0 when none)."""
    return int(session.scalar(select(func.max(SqlBank.version)).where(SqlBank.task == task)) or 0)


def resolve_bank(session: Session, task: str, ref: str | int | None = None) -> SqlBank:
    """Find a bank by version number ("3", "v3", 3), alias ("prod"), or latest (None/"latest").

    Raises:
        NotFoundError: naming what exists for the task.
    """
    text = str(ref).strip() if ref is not None else "latest"
    query = select(SqlBank).where(SqlBank.task == task)
    if text == "latest":
        row = session.scalars(query.order_by(SqlBank.version.desc()).limit(1)).first()
    elif text.isdigit() or (text[:1] in "vV" and text[1:].isdigit()):
        row = session.scalars(query.where(SqlBank.version == int(text.lstrip("vV")))).first()
    else:
        alias = session.get(SqlBankAlias, (task, text))
        row = session.get(SqlBank, alias.bank_id) if alias is not None else None
    if row is not None:
        return row
    versions = session.scalars(
        select(SqlBank.version).where(SqlBank.task == task).order_by(SqlBank.version)
    ).all()
    if not versions:
        raise NotFoundError(f"no bank for task {task!r}; run `mta bank build {task}` or push one")
    aliases = session.scalars(select(SqlBankAlias.alias).where(SqlBankAlias.task == task)).all()
    known = ", ".join([f"v{v}" for v in versions] + sorted(aliases))
    raise NotFoundError(f"task {task!r} has no bank {text!r}; it has: {known}")


def default_bank(session: Session, task: str) -> SqlBank:
    """The bank new users are pinned to: the task's `prod` alias if set, else the latest."""
    alias = session.get(SqlBankAlias, (task, PROD_ALIAS))
    if alias is not None:
        return session.get_one(SqlBank, alias.bank_id)
    return resolve_bank(session, task, None)


def bank_entity(session: Session, row: SqlBank) -> BankVersion:
    """A bank row as an entity, with its anchor count, aliases and whether it is the latest."""
    count = session.scalar(select(func.count()).where(SqlAnchor.bank_id == row.id)) or 0
    aliases = session.scalars(
        select(SqlBankAlias.alias)
        .where(SqlBankAlias.bank_id == row.id)
        .order_by(SqlBankAlias.alias)
    ).all()
    return row.to_entity(
        num_anchors=int(count),
        aliases=tuple(aliases),
        latest_version=latest_version(session, row.task),
    )


def bank_shapes(row: SqlBank) -> dict[str, tuple[int, int]]:
    """The base model's (out, in) per targeted module, cached in the bank row at publish time."""
    return {path: (int(s[0]), int(s[1])) for path, s in row.config["linear_shapes"].items()}


# --- read API ------------------------------------------------------------------------------


def list_banks(ctx: RegistryContext, *, task: str | None = None) -> list[BankVersion]:
    """Every bank version, by task then version (optionally one task's)."""
    with ctx.session() as session:
        query = select(SqlBank).order_by(SqlBank.task, SqlBank.version)
        if task is not None:
            query = query.where(SqlBank.task == task)
        return [bank_entity(session, row) for row in session.scalars(query)]


def get_bank(ctx: RegistryContext, task: str, ref: str | None = None) -> BankDetail:
    """One bank version with its anchors.

    Args:
        task: the task name.
        ref: version number ("3" or "v3"), alias, or None / "latest".

    Raises:
        NotFoundError: no such task or version.
    """
    with ctx.session() as session:
        row = resolve_bank(session, task, ref)
        anchors = session.scalars(
            select(SqlAnchor).where(SqlAnchor.bank_id == row.id).order_by(SqlAnchor.id)
        ).all()
        entity = bank_entity(session, row)
        digests = {row.index_blob}
        digests.update(d for a in anchors for d in (a.adapter_blob, a.embedding_blob))
        sizes = _blob_sizes(session, sorted(digests))
        config = {k: v for k, v in row.config.items() if k != "linear_shapes"}
        config["num_linear_modules"] = len(row.config.get("linear_shapes", {}))
        return BankDetail(
            **{f: getattr(entity, f) for f in BankVersion.__dataclass_fields__},
            anchors=tuple(a.to_entity(adapter_bytes=sizes.get(a.adapter_blob, 0)) for a in anchors),
            config=config,
            index_blob=row.index_blob,
            total_bytes=sum(sizes.values()),
        )


def _blob_sizes(session: Session, digests: Sequence[str]) -> dict[str, int]:
    """Recorded size of each digest."""
    if not digests:
        return {}
    rows = session.execute(
        select(SqlBlob.digest, SqlBlob.size).where(SqlBlob.digest.in_(set(digests)))
    )
    return {digest: int(size) for digest, size in rows}


def set_alias(ctx: RegistryContext, task: str, version: int, alias: str) -> BankVersion:
    """Point `alias` (e.g. "prod") at a version of `task`'s bank; aliases move, versions never.

    Raises:
        InvalidInputError: a malformed or reserved alias.
        NotFoundError: no such version.
    """
    validate_alias(alias)
    with ctx.session() as session:
        row = resolve_bank(session, task, int(version))
        existing = session.get(SqlBankAlias, (task, alias))
        if existing is None:
            session.add(SqlBankAlias(task=task, alias=alias, bank_id=row.id, updated_at=utcnow()))
        else:
            existing.bank_id = row.id
            existing.updated_at = utcnow()
        session.flush()
        return bank_entity(session, row)


# --- publishing ----------------------------------------------------------------------------


def publish_bank(
    ctx: RegistryContext,
    *,
    task: str,
    base_model: str,
    embedder: str,
    target_modules: Sequence[str],
    rank: int,
    anchor_data: str,
    config: dict[str, Any],
    anchors: Sequence[AnchorPayload],
) -> BankVersion:
    """Store the anchors' blobs and the HNSW index, then the rows of a new version (max + 1).

    Blobs go first; the bank, its anchors and the blob records are one transaction, so a
    reader sees a complete version or none.
    """
    from mta.index import AnchorIndex

    if not anchors:
        raise InvalidInputError("a bank needs at least one anchor")
    ids = [a.anchor_id for a in anchors]
    vectors = np.stack([np.asarray(a.embedding, dtype=np.float32) for a in anchors])
    index_blob = put_blob(ctx, AnchorIndex.build(ids, vectors).to_bytes(), KIND_BANK_INDEX)
    stored: list[tuple[AnchorPayload, PendingBlob, PendingBlob]] = []
    for anchor in anchors:
        adapter = put_blob(ctx, anchor.adapter_bytes, KIND_ANCHOR_ADAPTER)
        vector = np.ascontiguousarray(anchor.embedding, dtype=np.float32).tobytes()
        stored.append((anchor, adapter, put_blob(ctx, vector, KIND_ANCHOR_EMBEDDING)))
    config = {**config, "embedding_dim": int(vectors.shape[1]), "adapter_dtype": BANK_ADAPTER_DTYPE}
    for attempt in range(_PUBLISH_RETRIES):
        try:
            with ctx.session() as session:
                record_blob(session, index_blob)
                for _, adapter, vector in stored:
                    record_blob(session, adapter)
                    record_blob(session, vector)
                row = SqlBank(
                    task=task,
                    version=latest_version(session, task) + 1,
                    base_model=base_model,
                    embedder=embedder,
                    target_modules=list(target_modules),
                    rank=int(rank),
                    anchor_data=anchor_data,
                    config=config,
                    index_blob=index_blob.digest,
                    created_at=utcnow(),
                )
                session.add(row)
                session.flush()
                for anchor, adapter, vector in stored:
                    session.add(
                        SqlAnchor(
                            bank_id=row.id,
                            anchor_id=anchor.anchor_id,
                            adapter_blob=adapter.digest,
                            embedding_blob=vector.digest,
                            history_length=anchor.history_length,
                            cluster_size=anchor.cluster_size,
                        )
                    )
                session.flush()
                published = bank_entity(session, row)
            break
        except AlreadyExistsError:
            # Another process published the same version number first; take the next one.
            if attempt == _PUBLISH_RETRIES - 1:
                raise
    reassert_blobs(ctx, [index_blob, *(b for _, a, v in stored for b in (a, v))])
    return published


def build_bank(
    ctx: RegistryContext,
    *,
    task: str,
    data_path: Path,
    anchors: int,
    epochs: int = 1,
    rank: int = 8,
    anchor_data: str = "user",
    min_history: int = 8,
    lr: float = 2e-4,
    base_model: str | None = None,
    embedder: str | None = None,
    seed: int = 0,
    target_modules: Sequence[str] | None = None,
    max_steps: int | None = None,
    progress: ProgressFn | None = None,
) -> BankVersion:
    """Select anchors from a user file, train one meta-LoRA per anchor, publish a version.

    Args:
        task: LaMP task name.
        data_path: per-user JSON ([{user_id, profile, query}]); queries are not needed.
        anchors: number of anchors (k-means clusters).
        epochs, rank, lr, seed, max_steps: training of each meta-LoRA.
        anchor_data: "user" trains on the anchor's own history (the paper); "cluster" on the
            pooled histories of its cluster, with the cluster-mean embedding.
        min_history: minimum profile length of an anchor.
        base_model, embedder: specs (default env MTA_BASE_MODEL / MTA_EMBEDDER, then built-ins).
        target_modules: linear layers to adapt (default all seven Llama projections).
        progress: called as (stage, done, total) for stages "embed", "train".

    Returns:
        The new bank version.
    """
    from mta.anchors import select_anchors
    from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes
    from mta.embedding import normalize_rows, user_embedding
    from mta.lamp_data import load_users
    from mta.peft_io import adapter_to_bytes, validate_against_shapes
    from mta.tasks import get_task, profile_examples
    from mta.training import TrainConfig, train_lora

    if anchor_data not in ANCHOR_DATA_MODES:
        raise InvalidInputError(
            f"unknown anchor data {anchor_data!r}; valid: {', '.join(ANCHOR_DATA_MODES)}"
        )
    task_obj = get_task(task)
    modules = list(target_modules or DEFAULT_TARGET_MODULES)
    config = TrainConfig(
        rank=rank, epochs=epochs, lr=lr, seed=seed, target_modules=modules, max_steps=max_steps
    )
    config.validate()
    # Every argument is checked before the first user is embedded: a typo in --base-model
    # must not cost an embedding pass, nor a missing schema a training run.
    model_name = check_model_specs(base_model, embedder)
    with ctx.session():
        pass
    users = load_users(data_path, require_gold=False, task=task_obj)
    _check_enough_candidates(users, anchors, min_history)
    emb = ctx.embedder(embedder)
    vectors = []
    for n, user in enumerate(users):
        vectors.append(user_embedding(emb, [task_obj.item_text(i) for i in user["profile"]]))
        _report(progress, "embed", n + 1, len(users))
    matrix = np.stack(vectors)
    lengths = [len(u["profile"]) for u in users]
    try:
        selection = select_anchors(matrix, lengths, anchors, min_history=min_history, seed=seed)
    except ValueError as error:
        raise InvalidInputError(str(error)) from error

    model, tokenizer = ctx.base_model(model_name)
    shapes = linear_shapes(model, modules)
    payloads: list[AnchorPayload] = []
    # Whose history trained which anchor: deleting a user must find every anchor they fed.
    trained_on: dict[str, list[str]] = {}
    total = len(selection.anchor_rows)
    for n, row in enumerate(selection.anchor_rows):
        members = selection.members(selection.cluster_of[row])
        trained_on[str(users[row]["user_id"])] = (
            [str(users[m]["user_id"]) for m in members] if anchor_data == "cluster" else []
        )
        if anchor_data == "cluster":
            examples = [
                ex for m in members for ex in profile_examples(task_obj, users[m]["profile"])
            ]
            embedding = normalize_rows(matrix[members].mean(axis=0))
        else:
            examples = profile_examples(task_obj, users[row]["profile"])
            embedding = matrix[row]
        with MODEL_LOCK:
            adapter, _ = train_lora(model, tokenizer, examples, config, progress=False)
        adapter.check_finite()
        validate_against_shapes(adapter, shapes)
        payloads.append(
            AnchorPayload(
                anchor_id=str(users[row]["user_id"]),
                adapter_bytes=adapter_to_bytes(adapter, dtype=torch_dtype(BANK_ADAPTER_DTYPE)),
                embedding=embedding,
                history_length=lengths[row],
                cluster_size=len(members),
            )
        )
        _report(progress, "train", n + 1, total)
    return publish_bank(
        ctx,
        task=task,
        base_model=model_name,
        embedder=emb.name,
        target_modules=modules,
        rank=rank,
        anchor_data=anchor_data,
        config={
            "source": "build",
            "anchor_members": trained_on,
            "data_path": str(Path(data_path)),
            "candidates": len(users),
            "min_history": min_history,
            "seed": seed,
            "train": {"epochs": epochs, "lr": lr, "rank": rank, "max_steps": max_steps},
            "linear_shapes": {p: list(s) for p, s in shapes.items()},
        },
        anchors=payloads,
    )


def push_bank(
    ctx: RegistryContext,
    *,
    task: str,
    adapter_dirs: Sequence[Path],
    profiles_path: Path,
    base_model: str | None = None,
    embedder: str | None = None,
) -> BankVersion:
    """Publish externally trained PEFT LoRAs as a bank version.

    Args:
        task: LaMP task name.
        adapter_dirs: PEFT folders (adapter_config.json + adapter_model.safetensors); the
            anchor id is the folder name.
        profiles_path: per-user JSON whose `user_id`s are the folder names; each anchor's
            embedding comes from its profile.
        base_model, embedder: specs; adapters are validated against the base model's shapes.

    Raises:
        AdapterFormatError: a missing/garbled config, a pickle .bin, NaN weights.
        ShapeMismatchError: an adapter that does not fit the base model.
        InvalidInputError: duplicate folder names or an anchor without a profile.
    """
    from mta.base_model import linear_shapes
    from mta.embedding import user_embedding
    from mta.errors import ShapeMismatchError
    from mta.lamp_data import load_users
    from mta.peft_io import adapter_to_bytes, load_peft_adapter, validate_against_shapes
    from mta.tasks import get_task

    task_obj = get_task(task)
    if not adapter_dirs:
        raise InvalidInputError("no adapter folders given")
    model_name = check_model_specs(base_model, embedder)
    ids = [Path(d).resolve().name for d in adapter_dirs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InvalidInputError(f"adapter folder names must be unique: {', '.join(duplicates)}")
    profiles = {
        u["user_id"]: u for u in load_users(profiles_path, require_gold=False, task=task_obj)
    }
    missing = [i for i in ids if i not in profiles]
    if missing:
        raise InvalidInputError(
            f"{profiles_path} has no profile for anchor(s) {', '.join(missing)}"
        )
    adapters = [load_peft_adapter(d) for d in adapter_dirs]
    for adapter in adapters:
        adapter.check_finite()
    modules = sorted({m for a in adapters for m in a.target_modules()})
    model, _ = ctx.base_model(model_name)
    shapes = linear_shapes(model, modules)
    for anchor_id, adapter in zip(ids, adapters, strict=True):
        try:
            validate_against_shapes(adapter, shapes)
        except ShapeMismatchError as error:
            raise ShapeMismatchError(f"adapter {anchor_id!r}: {error}") from error
    emb = ctx.embedder(embedder)
    payloads = []
    for anchor_id, adapter in zip(ids, adapters, strict=True):
        profile = profiles[anchor_id]["profile"]
        payloads.append(
            AnchorPayload(
                anchor_id=anchor_id,
                adapter_bytes=adapter_to_bytes(adapter, dtype=torch_dtype(BANK_ADAPTER_DTYPE)),
                embedding=user_embedding(emb, [task_obj.item_text(i) for i in profile]),
                history_length=len(profile),
                cluster_size=1,
            )
        )
    rank = max(r for a in adapters for r in a.ranks().values())
    return publish_bank(
        ctx,
        task=task,
        base_model=model_name,
        embedder=emb.name,
        target_modules=modules,
        rank=rank,
        anchor_data="pushed",
        config={
            "source": "push",
            "adapter_dirs": [str(Path(d).resolve()) for d in adapter_dirs],
            "profiles_path": str(Path(profiles_path)),
            "linear_shapes": {p: list(s) for p, s in shapes.items()},
        },
        anchors=payloads,
    )
