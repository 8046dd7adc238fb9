"""Erase the anchors a deleted user's history trained, from every bank version.

An anchor's meta-LoRA is trained on its anchor user's history (`--anchor-data user`) or on
its whole cluster's (`cluster`, whose members `bank build` records). Deleting that user
must not leave the LoRA behind, so `delete_user --drop-anchor` removes such anchors from
each version that has them: the anchor rows go, the version's HNSW index is rebuilt
without them (the old index holds their embedding), and recipes that fused them go with
their stacks, since those stacks were trained on a delta that no longer exists. Versions
stay otherwise immutable; the bank's config records each redaction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mta.registry.blobrefs import KIND_BANK_INDEX, PendingBlob, put_blob, record_blob
from mta.registry.context import RegistryContext
from mta.registry.errors import InvalidInputError
from mta.registry.models import REDACTING, SqlAnchor, SqlBank, SqlRecipe, SqlStack, utcnow


@dataclass(frozen=True)
class TrainedAnchor:
    """An anchor whose meta-LoRA was trained on (among others) a given user's history."""

    bank_id: int
    task: str
    version: int
    anchor_id: str


@dataclass
class AnchorDrop:
    """One bank version losing some anchors: the new index is stored before any row changes."""

    bank_id: int
    task: str
    version: int
    anchor_ids: tuple[str, ...]
    new_index: PendingBlob
    freed_candidates: set[str] = field(default_factory=set)

    @property
    def anchor_id(self) -> str:
        """The dropped anchors as one label."""
        return ",".join(self.anchor_ids)


def anchors_trained_on(session: Session, user_id: str) -> list[TrainedAnchor]:
    """Every anchor, in any bank version, whose training data included this user's history."""
    found = []
    rows = session.execute(
        select(SqlAnchor.anchor_id, SqlBank.id, SqlBank.task, SqlBank.version, SqlBank.config)
        .join(SqlBank, SqlBank.id == SqlAnchor.bank_id)
        .order_by(SqlBank.task, SqlBank.version, SqlAnchor.anchor_id)
    )
    for anchor_id, bank_id, task, version, config in rows:
        members = (config or {}).get("anchor_members", {}).get(anchor_id, [])
        if anchor_id == user_id or user_id in members:
            found.append(TrainedAnchor(bank_id, task, version, anchor_id))
    return found


def plan_drops(ctx: RegistryContext, trained: list[TrainedAnchor]) -> list[AnchorDrop]:
    """Rebuild each affected version's index without the anchors, storing it (blob first)."""
    from mta.index import AnchorIndex

    by_bank: dict[int, list[TrainedAnchor]] = defaultdict(list)
    for anchor in trained:
        by_bank[anchor.bank_id].append(anchor)
    drops = []
    for bank_id, anchors in by_bank.items():
        dropped = {a.anchor_id for a in anchors}
        with ctx.read_session() as session:
            rows = session.scalars(select(SqlAnchor).where(SqlAnchor.bank_id == bank_id)).all()
            keep = [(r.anchor_id, r.embedding_blob) for r in rows if r.anchor_id not in dropped]
            gone = {
                d
                for r in rows
                if r.anchor_id in dropped
                for d in (r.adapter_blob, r.embedding_blob)
            }
            old_index = session.get_one(SqlBank, bank_id).index_blob
        first = anchors[0]
        if not keep:
            raise InvalidInputError(
                f"dropping {', '.join(sorted(dropped))} would leave bank {first.task} "
                f"v{first.version} without anchors; publish a new bank version first"
            )
        vectors = np.stack(
            [np.frombuffer(ctx.store.get_bytes(d), dtype=np.float32) for _, d in keep]
        )
        index = AnchorIndex.build([anchor_id for anchor_id, _ in keep], vectors)
        drops.append(
            AnchorDrop(
                bank_id=bank_id,
                task=first.task,
                version=first.version,
                anchor_ids=tuple(sorted(dropped)),
                new_index=put_blob(ctx, index.to_bytes(), KIND_BANK_INDEX),
                freed_candidates=gone | {old_index},
            )
        )
    return drops


def apply_drops(
    session: Session, drops: list[AnchorDrop], user_id: str
) -> tuple[set[str], set[str]]:
    """Apply the planned drops, for the deletion of `user_id`, in the caller's transaction.

    Every bank version's config also forgets the user (`redacted_config`), dropped or not.

    Returns:
        (users whose recipes were dropped and must fuse again, their dropped stack blobs).
    """
    refit: set[str] = set()
    stack_blobs: set[str] = set()
    dropped = {drop.bank_id: drop for drop in drops}
    for bank in session.scalars(select(SqlBank)).all():
        drop = dropped.get(bank.id)
        config = redacted_config(bank.config or {}, drop.anchor_ids if drop else (), user_id)
        if drop is None and config == bank.config:
            continue
        if drop is not None:
            record_blob(session, drop.new_index)
        session.info[REDACTING] = True
        try:
            bank.config = config
            if drop is not None:
                bank.index_blob = drop.new_index.digest
            session.flush()
        finally:
            session.info.pop(REDACTING, None)
    for drop in drops:
        session.execute(
            delete(SqlAnchor).where(
                SqlAnchor.bank_id == drop.bank_id, SqlAnchor.anchor_id.in_(drop.anchor_ids)
            )
        )
        recipes = session.scalars(select(SqlRecipe).where(SqlRecipe.bank_id == drop.bank_id))
        doomed = [r for r in recipes if any(a["anchor_id"] in drop.anchor_ids for a in r.anchors)]
        for recipe in doomed:
            refit.add(recipe.user_id)
            stack_blobs.update(
                session.scalars(select(SqlStack.blob).where(SqlStack.recipe_id == recipe.id))
            )
            session.execute(delete(SqlStack).where(SqlStack.recipe_id == recipe.id))
            session.delete(recipe)
        session.flush()
    return refit, stack_blobs


def redacted_config(
    config: dict[str, Any], dropped: tuple[str, ...], user_id: str
) -> dict[str, Any]:
    """A bank config without the dropped anchors' members and without `user_id` anywhere.

    `anchor_members` loses the dropped anchors' entries and the user from every other list,
    `adapter_dirs` (a pushed version's provenance) the folders named after them, and
    earlier redaction records lose the user's id. A new drop is recorded without the
    user's own id (an anchor named after them is counted, not named): the bank row keeps
    no trace of whom it forgot.
    """
    updated = dict(config)
    if "anchor_members" in config:
        updated["anchor_members"] = {
            anchor: [m for m in names if m != user_id]
            for anchor, names in (config.get("anchor_members") or {}).items()
            if anchor not in dropped and anchor != user_id
        }
    if isinstance(config.get("adapter_dirs"), list):  # a pushed anchor's folder is its id
        forgotten = {*dropped, user_id}
        updated["adapter_dirs"] = [
            d for d in config["adapter_dirs"] if PurePath(str(d)).name not in forgotten
        ]
    redactions = [
        {**r, "anchors": [a for a in r.get("anchors", []) if a != user_id]}
        if isinstance(r, dict)
        else r
        for r in config.get("redactions", [])
    ]
    if dropped:
        redactions.append(
            {
                "anchors": sorted(a for a in dropped if a != user_id),
                "count": len(dropped),
                "at": utcnow().isoformat(),
            }
        )
    if redactions or "redactions" in config:
        updated["redactions"] = redactions
    return updated
