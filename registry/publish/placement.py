"""Which selected users a round writes, keeps or evicts, and the entries it records for them.

`plan_users` reads each selected user's identity once and names their folder
(`engine_name` with the published options). `place_users` walks the planned users, newest
adapter first, then the users outside the selection, most recently published first: a
user whose manifest entry already has this identity (and whose folder is there) is kept,
the others are exported and written. With `max_bytes`, the first user that would pass the
bound is evicted together with every older one, so what stays is the newest working set.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mta.registry.banks.versions import ProgressFn
from mta.registry.base_weights import BaseWeights, base_weights
from mta.registry.context import RegistryContext
from mta.registry.entities import Export
from mta.registry.errors import InvalidInputError, NotFoundError
from mta.registry.identity import AdapterIdentity, engine_name
from mta.registry.publish.manifest import Manifest, name_problem, to_iso
from mta.registry.publish.request import PublishRequest, vllm_max_lora_rank
from mta.registry.publish.targets import PublishTarget
from mta.registry.users.export import adapter_identity, export_user
from mta.storage.cache import ENTRY_MANIFEST

_EPOCH = "1970-01-01T00:00:00+00:00"


@dataclass(frozen=True)
class Planned:
    """A selected user with an adapter: their identity digest, folder name and base model."""

    user_id: str
    identity: str  # AdapterIdentity.digest with the published options
    name: str  # engine_name with the same options: the folder and the engine's model name
    served_model_name: str
    adapter: AdapterIdentity  # read once here; the export is built from it
    adapter_at: datetime | None  # when the current adapter was made
    base: BaseWeights


@dataclass
class Placed:
    """What `place_users` did: the manifest's new entries and each user's fate."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)


def plan_users(
    ctx: RegistryContext,
    selected: Sequence[str],
    request: PublishRequest,
    times: Mapping[str, datetime],
) -> tuple[list[Planned], list[str], list[str]]:
    """(users to place, newest adapter first; refused ids; skipped ids).

    Raises:
        InvalidInputError, NotFoundError: a user named explicitly cannot be published (in
            a whole-task round they are refused or skipped instead).
    """
    planned: list[Planned] = []
    refused: list[str] = []
    skipped: list[str] = []
    bases: dict[str, BaseWeights] = {}
    named = set(request.user_ids or ())
    for user_id in selected:
        problem = name_problem(user_id)
        if problem is not None:
            if user_id in named:
                raise InvalidInputError(f"user id {user_id!r} cannot be published: {problem}")
            refused.append(user_id)
            continue
        try:
            identity = adapter_identity(ctx, user_id)
        except NotFoundError:
            if user_id in named:
                raise
            skipped.append(user_id)  # not fused yet, or deleted since the listing
            continue
        options = request.export_options(identity.base_model)
        if identity.base_model not in bases:
            bases[identity.base_model] = base_weights(identity.base_model, ctx.cache_dir)
        planned.append(
            Planned(
                user_id=user_id,
                identity=identity.digest(**options),
                name=engine_name(identity, **options),
                served_model_name=options["base_model_name"],
                adapter=identity,
                adapter_at=times.get(user_id),
                base=bases[identity.base_model],
            )
        )
    planned.sort(key=lambda p: (-(p.adapter_at.timestamp() if p.adapter_at else 0), p.user_id))
    return planned, refused, skipped


def place_users(
    ctx: RegistryContext,
    target: PublishTarget,
    planned: Sequence[Planned],
    carried: Mapping[str, dict[str, Any]],
    previous: Manifest,
    request: PublishRequest,
    now: datetime,
    progress: ProgressFn | None,
) -> Placed:
    """Write the planned users whose folder changed and fit the byte bound; keep the rest.

    `carried` (entries of users outside the selection) fill what the planned users leave
    of `request.max_bytes`, most recently published first.
    """
    placed = Placed()
    budget = request.max_bytes
    used = 0
    full = False
    for done, plan in enumerate(planned, start=1):
        entry = previous.users.get(plan.user_id)
        same = (
            entry is not None
            and entry.get("identity") == plan.identity
            and entry.get("name") == plan.name
            and target.has_folder(plan.name)
        )
        export = None if same else _export(ctx, plan, request)
        size = int(entry["bytes"]) if same else export.bytes
        full = full or (budget is not None and used + size > budget)
        if full:
            placed.evicted.append(plan.user_id)
        elif same:
            used += size
            placed.entries[plan.user_id] = _copy(entry)
            placed.unchanged.append(plan.user_id)
        else:
            used += size
            _write(target, plan.name, export)
            placed.entries[plan.user_id] = _entry(plan, export, request, now)
            placed.written.append(plan.user_id)
        if progress is not None:
            progress("publish", done, len(planned))
    newest_first = sorted(carried, key=lambda u: (carried[u].get("published_at") or _EPOCH, u))
    for user_id in reversed(newest_first):
        size = int(carried[user_id].get("bytes", 0))
        full = full or (budget is not None and used + size > budget)
        if full:
            placed.evicted.append(user_id)
        else:
            used += size
            placed.entries[user_id] = _copy(carried[user_id])
    return placed


def _export(ctx: RegistryContext, plan: Planned, request: PublishRequest) -> Export:
    """Build (or find) the user's folder in the export cache: its bytes decide eviction."""
    return export_user(ctx, plan.adapter, None, **request.export_options(plan.adapter.base_model))


def _write(target: PublishTarget, name: str, export: Export) -> None:
    """Copy the cached export into a staging folder and swap it in as `name`."""
    with target.folder_writer(name) as staging:
        shutil.copytree(
            Path(export.path),
            staging,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(ENTRY_MANIFEST),
        )


def _copy(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry to carry into the new manifest (its grace list copied: it gets edited)."""
    return {**entry, "previous": [dict(p) for p in entry.get("previous", [])]}


def _entry(plan: Planned, export: Export, request: PublishRequest, now: datetime) -> dict[str, Any]:
    """The manifest entry of a folder written this round."""
    return {
        "name": plan.name,
        "identity": plan.identity,
        "bytes": export.bytes,
        "rank": export.rank,
        "dtype": request.dtype,
        "format": request.format,
        "max_rank": request.max_rank,
        "max_lora_rank": vllm_max_lora_rank(export.rank),
        "served_model_name": plan.served_model_name,
        "base_model": plan.base.to_dict(),
        "adapter_at": to_iso(plan.adapter_at) if plan.adapter_at else None,
        "published_at": to_iso(now),
        "previous": [],
    }


def base_warnings(planned: Sequence[Planned]) -> tuple[str, ...]:
    """One line per GGUF-trained base published under a hub model's name.

    Adapters trained on a GGUF's dequantized weights (the offline `smollm2`) fit those
    weights; an engine that loads the hub model of the same name serves the original,
    unquantized weights, which differ from them.
    """
    counts: dict[tuple[str, str, str], int] = {}
    for plan in planned:
        if plan.base.dequantized_gguf and _is_hub_name(plan.served_model_name):
            key = (plan.base.name, str(plan.base.weights), plan.served_model_name)
            counts[key] = counts.get(key, 0) + 1
    return tuple(
        f"{count} user(s) trained on {name!r} (weights dequantized from {Path(weights).name}) "
        f"are published for the hub model {served!r}, whose own weights differ; serve the "
        f"dequantized folder and pass it as --served-model-name (docs/serving.md, base model)"
        for (name, weights, served), count in sorted(counts.items())
    )


def _is_hub_name(name: str) -> bool:
    """Whether a served model name is a hub id rather than a local path."""
    return not name.startswith(("/", ".", "~")) and not Path(name).exists()
