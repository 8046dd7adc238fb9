"""Frozen dataclasses the service layer returns; `to_dict()` gives JSON-ready dicts for `--json`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    """Turn a field value into JSON-ready data (datetimes → ISO 8601, paths → str)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


class _Entity:
    """Mixin: `to_dict()` over the dataclass fields."""

    def to_dict(self) -> dict[str, Any]:
        """The entity as JSON-ready data."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class BankVersion(_Entity):
    """One published, immutable version of a task's meta-LoRA bank."""

    task: str
    version: int
    base_model: str
    embedder: str
    target_modules: tuple[str, ...]
    rank: int
    anchor_data: str  # "user" | "cluster" | "pushed"
    source: str  # "build" | "push"
    num_anchors: int
    aliases: tuple[str, ...]
    is_latest: bool
    created_at: datetime


@dataclass(frozen=True)
class Anchor(_Entity):
    """One anchor of a bank."""

    anchor_id: str
    history_length: int
    cluster_size: int
    adapter_blob: str
    embedding_blob: str
    adapter_bytes: int


@dataclass(frozen=True)
class BankDetail(BankVersion):
    """A bank version with its anchors and build configuration."""

    anchors: tuple[Anchor, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    index_blob: str = ""
    total_bytes: int = 0  # adapters + anchor embeddings + index


@dataclass(frozen=True)
class User(_Entity):
    """A registered user, pinned to a bank version of their task."""

    user_id: str
    task: str
    bank_version: int
    embedder: str
    profile_items: int
    profile_blob: str
    embedding_blob: str
    created_at: datetime


@dataclass(frozen=True)
class RecipeAnchor(_Entity):
    """One anchor in a recipe: its cosine score and fusion weight."""

    anchor_id: str
    score: float
    weight: float


@dataclass(frozen=True)
class Recipe(_Entity):
    """How to rebuild a user's fused adapter; the fused adapter itself is never stored."""

    recipe_id: int
    user_id: str
    task: str
    bank_version: int
    anchors: tuple[RecipeAnchor, ...]
    method: str
    weight_rule: str
    params: dict[str, Any]  # top_k, temperature, rank (svd only)
    created_at: datetime


@dataclass(frozen=True)
class Stack(_Entity):
    """A user's trained low-rank stack on top of their fused adapter."""

    stack_id: int
    user_id: str
    recipe_id: int
    task: str
    bank_version: int
    blob: str
    rank: int
    dtype: str
    bytes: int
    train_config: dict[str, Any]  # TrainConfig fields + shots, shot_indices, steps, losses
    final_loss: float | None
    stale: bool  # trained against a bank version that is no longer the task's latest
    created_at: datetime


@dataclass(frozen=True)
class UserDetail(User):
    """A user with their current recipe and stack, and the bytes they occupy.

    The current recipe is the latest one; the current stack is the newest stack trained on
    that recipe (None after a re-fuse until the user is adapted again).
    """

    recipe: Recipe | None = None
    stack: Stack | None = None
    num_recipes: int = 0
    num_stacks: int = 0
    bytes: int = 0  # profile + embedding + every stack blob of this user


@dataclass(frozen=True)
class Export(_Entity):
    """A materialized PEFT folder for a user (fused + stack, optionally compressed)."""

    user_id: str
    path: Path  # out_dir when given, else the cache folder
    cache_path: Path
    from_cache: bool
    rank: int  # largest per-module rank of the exported adapter
    max_rank: int | None
    recipe_id: int
    stack_id: int | None  # None: fuse-only export (the user has no stack yet)
    bytes: int
    base_model: str  # the bank's base model the adapter was trained on, as recorded
    base_weights: str | None  # the GGUF file or model folder that name resolves to here
    base_sha256: str | None  # digest of those weight files (registry.base_weights)


@dataclass(frozen=True)
class PublishResult(_Entity):
    """What one `publish_users` round did to a publish target (user ids, sorted)."""

    target: str  # URL of the target root
    served_model_name: str | None  # the --served-model-name; None: each bank's base model
    written: tuple[str, ...]  # exported and swapped in (new or changed identity)
    unchanged: tuple[str, ...]  # identity equal to the manifest's: nothing written
    removed: tuple[str, ...]  # users whose every name went: deleted, or left without adapter
    skipped: tuple[str, ...]  # selected users without a recipe yet (nothing to serve)
    refused: tuple[str, ...]  # ids that cannot be folder names (see publish.users)
    bytes_written: int
    published_users: int  # users the manifest lists after the round
    published_bytes: int  # their current folders' bytes, per the manifest
    manifest_written: bool  # False when nothing changed (the round wrote nothing)
    seconds: float
    names: dict[str, str] = field(default_factory=dict)  # written user -> their new name
    retired: tuple[str, ...] = ()  # names removed this round (grace over, or user gone)
    evicted: tuple[str, ...] = ()  # users dropped to stay within max_bytes (the oldest)
    dtype: str = "fp16"  # tensor precision of the published folders
    max_rank: int | None = None  # the rank cap asked for (--max-rank)
    rank: int = 0  # the largest rank among published users
    max_lora_rank: int | None = None  # the vLLM --max-lora-rank that loads them all
    warnings: tuple[str, ...] = ()  # one line each, e.g. a GGUF base under a hub name


@dataclass(frozen=True)
class DeleteResult(_Entity):
    """What `delete_user` removed."""

    user_id: str
    rows_deleted: int
    blobs_deleted: tuple[str, ...]
    bytes_freed: int
    cache_entries_deleted: int
    anchors_dropped: tuple[str, ...] = ()  # "task vN anchor" erased with --drop-anchor
    users_to_refuse: tuple[str, ...] = ()  # their recipes used a dropped anchor: fuse again


@dataclass(frozen=True)
class GcResult(_Entity):
    """What `gc` removed (or would remove, with `dry_run`)."""

    deleted: tuple[str, ...]
    bytes_freed: int
    kept_in_grace: int  # unreferenced but younger than the grace period
    referenced: int
    blob_rows_deleted: int
    dry_run: bool
    superseded_stacks: int = 0  # stacks no longer served, older than the retention
    superseded_recipes: int = 0  # recipes no longer current, older than the retention
    cache_entries_removed: int = 0  # export-cache entries of deleted users, or corrupt ones
    deletions_finished: tuple[str, ...] = ()  # user deletions a crash had interrupted


@dataclass(frozen=True)
class FsckProblem(_Entity):
    """One row whose blob is missing or fails its digest."""

    table: str
    row: str
    column: str
    digest: str
    problem: str  # "missing" | "corrupt" | "size_mismatch" | "erased_source" (cache entries)
    detail: str = ""


@dataclass(frozen=True)
class FsckReport(_Entity):
    """Registry ↔ store consistency; `ok` is False when a row's blob is missing or corrupt.

    Orphans (store blobs no row references) do not make `ok` False: a crash between writing a
    blob and its row leaves them by design, and `gc` reclaims them.
    """

    ok: bool
    checked: int
    missing: tuple[FsckProblem, ...]
    corrupt: tuple[FsckProblem, ...]
    orphans: tuple[str, ...]
    orphan_bytes: int
    unreferenced_rows: tuple[str, ...]  # `blobs` rows that no other row references
