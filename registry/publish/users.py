"""Publish users' adapters as `<target>/<user_id>/` PEFT folders that serving engines load by name.

One round (`publish_users`) reads the target's manifest, exports every selected user whose
adapter identity differs from the one the manifest records (through `export_user`, so a
published folder is byte-for-byte `mta user export`), swaps each folder in atomically,
removes the folders of users deleted from the registry, and writes the manifest last.
`watch_publish` repeats rounds to keep the target in sync.

Folder names are user ids verbatim. `validate_user_id` already limits ids to
`[A-Za-z0-9._@-]`, which is safe on every filesystem and in S3 keys; on top of that, ids
starting with "." (hidden files, and the publisher's own `.mta-*` staging names) and the
manifest's file name are refused. So the mapping is the identity, trivially reversible.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mta.dtypes import torch_dtype
from mta.registry.banks.versions import ProgressFn, list_banks
from mta.registry.context import RegistryContext
from mta.registry.entities import PublishResult
from mta.registry.errors import InvalidInputError, NotFoundError, RegistryError
from mta.registry.identity import AdapterIdentity
from mta.registry.names import validate_user_id
from mta.registry.publish.targets import MANIFEST_NAME, PublishTarget, open_target
from mta.registry.users.export import adapter_identity, export_user
from mta.registry.users.records import list_users

MANIFEST_FORMAT = 1
# Base-model aliases whose weights ship locally but which engines know by a hub id.
SERVED_NAMES = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def default_served_name(base_model: str) -> str:
    """The name an engine serves a bank's base model under: an alias's hub id, else as recorded.

    A hub id stays as it is. A local path also stays: `vllm serve /models/x` serves the model
    under that path unless `--served-model-name` says otherwise, so pass the same name here.
    """
    return SERVED_NAMES.get(base_model.lower(), base_model)


def folder_name_problem(user_id: str) -> str | None:
    """Why `user_id` cannot be a published folder name, or None when it can."""
    if user_id.startswith("."):
        return "ids starting with '.' are hidden folders and reserved for staging"
    if user_id == MANIFEST_NAME:
        return f"{MANIFEST_NAME!r} is the manifest's file name"
    return None


@dataclass(frozen=True)
class _Planned:
    """A user to publish: the identity digest their folder will have and the served name."""

    user_id: str
    identity: str
    served_model_name: str
    adapter: AdapterIdentity  # read once here; the export is built from it


def _read_manifest(target: PublishTarget) -> dict[str, dict[str, Any]] | None:
    """The previous round's users (id → entry); None when the target has no manifest yet.

    Raises:
        InvalidInputError: the manifest is unreadable or lists a name that is not a user id
            (entries become paths to delete, so a tampered one must not reach the filesystem).
    """
    raw = target.read_manifest()
    if raw is None:
        return None
    where = f"{target.url}/{MANIFEST_NAME}"
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise InvalidInputError(f"{where} is not JSON ({error}); fix or remove it") from error
    users = data.get("users") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != MANIFEST_FORMAT
        or not isinstance(users, dict)
    ):
        raise InvalidInputError(f"{where} is not an mta manifest of format {MANIFEST_FORMAT}")
    for user_id, entry in users.items():
        validate_user_id(user_id)
        if folder_name_problem(user_id) or not isinstance(entry, dict):
            raise InvalidInputError(f"{where} lists an invalid entry {user_id!r}")
    return users


def _select(
    ctx: RegistryContext, task: str | None, user_ids: Sequence[str] | None
) -> tuple[list[str], set[str]]:
    """(selected user ids, every user id in the registry).

    Raises:
        NotFoundError: `task` has no bank, or a listed user does not exist.
        InvalidInputError: a listed user belongs to another task than `task`.
    """
    if task is not None and not list_banks(ctx, task=task):
        raise NotFoundError(f"no bank for task {task!r}")
    users = {user.user_id: user for user in list_users(ctx)}
    if user_ids is None:
        return sorted(u for u, e in users.items() if task is None or e.task == task), set(users)
    unknown = [u for u in user_ids if u not in users]
    if unknown:
        raise NotFoundError(f"no such user: {', '.join(map(repr, unknown))}")
    other = [u for u in user_ids if task is not None and users[u].task != task]
    if other:
        raise InvalidInputError(f"not users of task {task!r}: {', '.join(map(repr, other))}")
    return sorted(set(user_ids)), set(users)


def _plan(
    ctx: RegistryContext,
    selected: Sequence[str],
    *,
    explicit: bool,
    served_model_name: str | None,
    max_rank: int | None,
    dtype: str,
) -> tuple[list[_Planned], list[str], list[str]]:
    """(users to publish, refused ids, skipped ids); explicit selections raise instead."""
    planned: list[_Planned] = []
    refused: list[str] = []
    skipped: list[str] = []
    for user_id in selected:
        problem = folder_name_problem(user_id)
        if problem is not None:
            if explicit:
                raise InvalidInputError(f"user id {user_id!r} cannot be published: {problem}")
            refused.append(user_id)
            continue
        try:
            identity = adapter_identity(ctx, user_id)
        except NotFoundError:
            if explicit:
                raise
            skipped.append(user_id)  # not fused yet, or deleted since the listing
            continue
        served = served_model_name or default_served_name(identity.base_model)
        digest = identity.digest(max_rank=max_rank, dtype=dtype, base_model_name=served)
        planned.append(_Planned(user_id, digest, served, identity))
    return planned, refused, skipped


def publish_users(
    ctx: RegistryContext,
    target_url: str,
    *,
    task: str | None = None,
    user_ids: Sequence[str] | None = None,
    served_model_name: str | None = None,
    dtype: str = "fp32",
    max_rank: int | None = None,
    progress: ProgressFn | None = None,
) -> PublishResult:
    """Bring `<target>/<user_id>/` up to date for the selected users, then write the manifest.

    A user is re-exported only when their adapter identity digest (stack, recipe, export
    options and served name) differs from the manifest's, or their local folder is missing.
    A folder the previous manifest lists is removed when its user no longer exists in the
    registry, or is selected but has no adapter; users outside the selection keep theirs.

    Args:
        target_url: a folder, `file://PATH` or `s3://BUCKET[/PREFIX]` (the bucket must exist).
        task: publish only this task's users (default: every user).
        user_ids: publish only these users; each must exist, have a recipe and a safe name.
        served_model_name: written as `base_model_name_or_path` (vLLM's filesystem resolver
            loads a folder only when it equals the model vLLM was started with); default
            per user: the bank's base model, an alias as its hub id (`default_served_name`).
        dtype: tensor precision of the published folders ("fp32", "fp16", "bf16").
        max_rank: compress every adapter to this rank (engines with `--max-lora-rank`).
        progress: called with ("publish", done, total) as users are checked.

    Raises:
        NotFoundError, InvalidInputError: bad selection or manifest; nothing is written.
        StorageError: the target cannot be written.
    """
    started = time.monotonic()
    _check_options(served_model_name, dtype, max_rank)
    target = open_target(target_url)
    target.prepare()
    manifest = _read_manifest(target)
    previous = manifest or {}
    selected, existing = _select(ctx, task, user_ids)
    planned, refused, skipped = _plan(
        ctx,
        selected,
        explicit=user_ids is not None,
        served_model_name=served_model_name,
        max_rank=max_rank,
        dtype=dtype,
    )
    # Users outside the selection keep their folders and manifest entries as they are.
    entries = {u: e for u, e in previous.items() if u in existing and u not in set(selected)}
    written, unchanged = _sync_folders(
        ctx, target, planned, previous, entries, dtype=dtype, max_rank=max_rank, progress=progress
    )
    gone = set(skipped) | (set(previous) - existing)
    removed = sorted(u for u in previous if u in gone)
    for user_id in removed:
        target.remove_folder(user_id)
    manifest_written = manifest is None or manifest != entries
    if manifest_written:
        _write_manifest(target, entries)
    return PublishResult(
        target=target.url,
        served_model_name=served_model_name,
        written=tuple(written),
        unchanged=tuple(unchanged),
        removed=tuple(removed),
        skipped=tuple(skipped),
        refused=tuple(refused),
        bytes_written=sum(int(entries[u]["bytes"]) for u in written),
        published_users=len(entries),
        published_bytes=sum(int(e.get("bytes", 0)) for e in entries.values()),
        manifest_written=manifest_written,
        seconds=round(time.monotonic() - started, 3),
    )


def _sync_folders(
    ctx: RegistryContext,
    target: PublishTarget,
    planned: Sequence[_Planned],
    previous: Mapping[str, dict[str, Any]],
    entries: dict[str, dict[str, Any]],
    *,
    dtype: str,
    max_rank: int | None,
    progress: ProgressFn | None,
) -> tuple[list[str], list[str]]:
    """Write the folder of each planned user whose identity changed; (written, unchanged).

    A user whose previous manifest entry has the same identity digest, and whose folder is
    still there, keeps entry and folder. `entries` gets every planned user's entry.
    """
    written, unchanged = [], []
    for done, plan in enumerate(planned, start=1):
        entry = previous.get(plan.user_id)
        if entry and entry.get("identity") == plan.identity and target.has_folder(plan.user_id):
            entries[plan.user_id] = entry
            unchanged.append(plan.user_id)
        else:
            entries[plan.user_id] = _publish_one(ctx, target, plan, dtype=dtype, max_rank=max_rank)
            written.append(plan.user_id)
        if progress is not None:
            progress("publish", done, len(planned))
    return written, unchanged


def _check_options(served_model_name: str | None, dtype: str, max_rank: int | None) -> None:
    """Refuse bad export options before any work (an unchanged round would never export)."""
    if served_model_name is not None and not served_model_name.strip():
        raise InvalidInputError("served model name is empty")
    torch_dtype(dtype)  # an unknown name fails before any work
    if max_rank is not None and max_rank < 1:
        raise InvalidInputError(f"max_rank must be at least 1, got {max_rank}")


def _publish_one(
    ctx: RegistryContext,
    target: PublishTarget,
    plan: _Planned,
    *,
    dtype: str,
    max_rank: int | None,
) -> dict[str, Any]:
    """Export one user into a staging folder, swap it in, and return their manifest entry."""
    with target.folder_writer(plan.user_id) as staging:
        export = export_user(
            ctx,
            plan.adapter,
            staging,
            max_rank=max_rank,
            dtype=dtype,
            base_model_name=plan.served_model_name,
        )
    return {
        "identity": plan.identity,
        "bytes": export.bytes,
        "folder": plan.user_id,
        "served_model_name": plan.served_model_name,
        "dtype": dtype,
        "max_rank": max_rank,
    }


def _write_manifest(target: PublishTarget, entries: Mapping[str, dict[str, Any]]) -> None:
    """Write the manifest listing `entries` (sorted by user id) in one step."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "generator": "mta publish",
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "users": {user_id: entries[user_id] for user_id in sorted(entries)},
    }
    target.write_manifest((json.dumps(manifest, indent=1) + "\n").encode())


# Errors a long-running sync survives (reported, then retried next round); bugs still raise.
RETRIED_ERRORS: tuple[type[Exception], ...] = (RegistryError, OSError)


def watch_publish(
    ctx: RegistryContext,
    target_url: str,
    *,
    interval: float,
    rounds: int | None = None,
    on_round: Callable[[PublishResult], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **options: Any,
) -> PublishResult | None:
    """Run `publish_users` every `interval` seconds; `rounds` (tests) stops after that many.

    Args:
        interval: seconds between the end of a round and the start of the next.
        rounds: how many rounds to run; None runs until interrupted.
        on_round: called with each round's result.
        on_error: called with a round's storage / registry error, after which the loop
            goes on; without it the error propagates.
        sleep: the wait between rounds (tests pass a fake).
        options: `publish_users`' keyword arguments.

    Returns:
        The last successful round's result (None if none succeeded).
    """
    from mta.storage import StorageError

    if interval <= 0:
        raise InvalidInputError(f"watch interval must be positive, got {interval}")
    last: PublishResult | None = None
    done = 0
    while rounds is None or done < rounds:
        if done:
            sleep(interval)
        done += 1
        try:
            result = publish_users(ctx, target_url, **options)
        except (StorageError, *RETRIED_ERRORS) as error:
            if on_error is None:
                raise
            on_error(error)
            continue
        last = result
        if on_round is not None:
            on_round(result)
    return last
