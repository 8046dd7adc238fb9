"""Publish users' adapters as `<target>/<engine name>/` PEFT folders that engines load by name.

A round (`publish_users`) reads the target's manifest, exports every selected user whose
adapter identity (with the published options) differs from the manifest's, writes each
into a new folder named `engine_name` (`<user id>~<12 hex>`, so new bytes are always a new
name and no engine can serve a stale copy under an old one), and writes the manifest. The
user's previous name stays for `keep_previous` seconds so requests in flight on it finish;
the names of users deleted from the registry, left without an adapter, or evicted to stay
within `max_bytes` go in the same round. `watch_publish` repeats rounds.

Order within a round: new folders first; then the names no reader needs any more (graces
that ended, users deleted from the registry, a previous round's unfinished `removing`);
then the manifest, listing under `removing` the current names it retires (evicted users,
`keep_previous=0`); then those. A reader of the manifest never finds a name it lists as
current missing, a deleted user's id is in no manifest written after the deletion, and a
crash at any point leaves nothing the next round cannot finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from mta.registry.banks.versions import ProgressFn
from mta.registry.context import RegistryContext
from mta.registry.entities import PublishResult
from mta.registry.errors import InvalidInputError, RegistryError
from mta.registry.publish.manifest import (
    Manifest,
    from_iso,
    read_manifest,
    to_iso,
    write_manifest,
)
from mta.registry.publish.placement import (
    Placed,
    Planned,
    base_warnings,
    place_users,
    plan_users,
)
from mta.registry.publish.request import PublishRequest, vllm_max_lora_rank
from mta.registry.publish.selection import adapter_times, publish_selection
from mta.registry.publish.targets import PublishTarget, open_target


def publish_users(
    ctx: RegistryContext,
    target_url: str,
    request: PublishRequest | None = None,
    *,
    progress: ProgressFn | None = None,
    now: datetime | None = None,
) -> PublishResult:
    """Bring the target's folders and manifest up to date with the registry, once.

    A user is re-exported only when their adapter identity digest (stack, recipe, export
    options and served name) differs from the manifest's, or their local folder is missing.
    Users outside the selection keep their folders and entries; users deleted from the
    registry (or selected but left without an adapter) lose every name they had.

    Args:
        target_url: a folder, `file://PATH` or `s3://BUCKET[/PREFIX]` (the bucket must exist).
        request: selection, export options and bounds (default: every user, fp16).
        progress: called with ("publish", done, total) as selected users are placed.
        now: the round's time (tests); default the current UTC time.

    Raises:
        NotFoundError, InvalidInputError: bad request, selection or manifest; nothing written.
        StorageError: the target cannot be written.
    """
    started = time.monotonic()
    request = (request or PublishRequest()).validate()
    now = now or datetime.now(timezone.utc)
    target = open_target(target_url)
    target.prepare()
    old = read_manifest(target)
    previous = old or Manifest()
    times = adapter_times(ctx)
    selected, existing = publish_selection(ctx, request, times, now)
    planned, refused, skipped = plan_users(ctx, selected, request, times)
    chosen = set(selected)
    carried = {u: e for u, e in previous.users.items() if u in existing and u not in chosen}
    placed = place_users(ctx, target, planned, carried, previous, request, now, progress)
    manifest = Manifest(placed.entries)
    gone = sorted((set(skipped) | set(previous.users) - existing) & set(previous.users))
    retired = _retire(manifest, previous, placed.written, request.keep_previous, now)
    for user_id in (*gone, *placed.evicted):
        retired += previous.names_of(user_id)
    retired = sorted(set(retired) - manifest.listed_names())
    # A name the old manifest gives a user who is still served elsewhere goes after the new
    # manifest, listed under `removing`; the others (graces that ended, users gone from the
    # registry) go before it, so no manifest names a deleted user again.
    in_use = {previous.users[u]["name"] for u in previous.users if u not in gone}
    manifest.removing = [name for name in retired if name in in_use]
    leftovers = set(previous.removing) - manifest.listed_names()  # a round that died halfway
    for name in sorted(leftovers | (set(retired) - in_use)):
        target.remove_folder(name)
    manifest_written = old is None or manifest.content() != previous.content()
    if manifest_written:
        write_manifest(target, manifest, now)
    for name in manifest.removing:
        target.remove_folder(name)
    return _result(
        target,
        request,
        manifest,
        placed,
        planned,
        gone=gone,
        retired=retired,
        refused=refused,
        skipped=skipped,
        manifest_written=manifest_written,
        started=started,
    )


def _retire(
    manifest: Manifest,
    previous: Manifest,
    written: list[str],
    keep_previous: float,
    now: datetime,
) -> list[str]:
    """Give re-published users' old names their grace; the names whose grace ended."""
    expires = to_iso(now + timedelta(seconds=keep_previous))
    for user_id in written:
        entry = manifest.users[user_id]
        kept = previous.users.get(user_id, {}).get("previous", [])
        old_name = previous.users.get(user_id, {}).get("name")
        if old_name is not None and old_name != entry["name"]:
            kept = [*kept, {"name": old_name, "expires_at": expires}]
        entry["previous"] = [p for p in kept if p["name"] != entry["name"]]
    retired: list[str] = []
    for entry in manifest.users.values():
        graces = entry.get("previous", [])
        ended = [p for p in graces if keep_previous == 0 or from_iso(p["expires_at"]) <= now]
        retired += [p["name"] for p in ended]
        entry["previous"] = [p for p in graces if p not in ended]
    return retired


def _result(
    target: PublishTarget,
    request: PublishRequest,
    manifest: Manifest,
    placed: Placed,
    planned: list[Planned],
    *,
    gone: list[str],
    retired: list[str],
    refused: list[str],
    skipped: list[str],
    manifest_written: bool,
    started: float,
) -> PublishResult:
    """The round's summary (and the base-model warnings of the users it publishes)."""
    entries = manifest.users
    rank = max((int(e.get("rank", 0)) for e in entries.values()), default=0)
    published = {p.user_id for p in planned} & set(entries)
    return PublishResult(
        target=target.url,
        served_model_name=request.served_model_name,
        written=tuple(sorted(placed.written)),
        unchanged=tuple(sorted(placed.unchanged)),
        removed=tuple(gone),
        skipped=tuple(skipped),
        refused=tuple(refused),
        bytes_written=sum(int(entries[u]["bytes"]) for u in placed.written),
        published_users=len(entries),
        published_bytes=sum(int(e.get("bytes", 0)) for e in entries.values()),
        manifest_written=manifest_written,
        seconds=round(time.monotonic() - started, 3),
        names={u: entries[u]["name"] for u in sorted(placed.written)},
        retired=tuple(retired),
        evicted=tuple(sorted(placed.evicted)),
        dtype=request.dtype,
        max_rank=request.max_rank,
        rank=rank,
        max_lora_rank=vllm_max_lora_rank(rank) if entries else None,
        warnings=base_warnings([p for p in planned if p.user_id in published]),
    )


# Errors a long-running sync survives (reported, then retried next round); bugs still raise.
RETRIED_ERRORS: tuple[type[Exception], ...] = (RegistryError, OSError)


def watch_publish(
    ctx: RegistryContext,
    target_url: str,
    request: PublishRequest | None = None,
    *,
    interval: float,
    rounds: int | None = None,
    on_round: Callable[[PublishResult], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PublishResult | None:
    """Run `publish_users` every `interval` seconds; `rounds` (tests) stops after that many.

    Args:
        request: every round's request (see `publish_users`).
        interval: seconds between the end of a round and the start of the next.
        rounds: how many rounds to run; None runs until interrupted.
        on_round: called with each round's result.
        on_error: called with a round's storage / registry error, after which the loop
            goes on; without it the error propagates.
        sleep: the wait between rounds (tests pass a fake).

    Returns:
        The last successful round's result (None if none succeeded).
    """
    from mta.storage import StorageError

    if interval <= 0:
        raise InvalidInputError(f"watch interval must be positive, got {interval}")
    request = (request or PublishRequest()).validate()
    last: PublishResult | None = None
    done = 0
    while rounds is None or done < rounds:
        if done:
            sleep(interval)
        done += 1
        try:
            result = publish_users(ctx, target_url, request)
        except (StorageError, *RETRIED_ERRORS) as error:
            if on_error is None:
                raise
            on_error(error)
            continue
        last = result
        if on_round is not None:
            on_round(result)
    return last
