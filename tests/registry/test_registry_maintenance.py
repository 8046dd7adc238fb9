"""gc, fsck, the storage report and evaluation records."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from mta.registry.maintenance.report import OPPU_RANK
from mta.registry.service import (
    AdaptRequest,
    adapt_user,
    add_user,
    fsck,
    gc,
    get_bank,
    get_user,
    list_eval_runs,
    record_eval_run,
    storage_report,
)
from tests.fixtures_model import TINY_EMBEDDER_DIM
from tests.support import TASK, movie_user


def _blob_path(ctx, digest: str) -> Path:
    return Path(ctx.store.path_for(digest))


def _age(ctx, digest: str, seconds: float) -> None:
    """Pretend a blob was written `seconds` ago."""
    when = time.time() - seconds
    os.utime(_blob_path(ctx, digest), (when, when))


def _overwrite(path: Path, data: bytes) -> None:
    path.chmod(0o644)
    path.write_bytes(data)


def test_gc_honours_the_grace_period_and_dry_run(bank_registry):
    old = bank_registry.store.put_bytes(b"crashed before its row was written")
    new = bank_registry.store.put_bytes(b"being written right now")
    _age(bank_registry, old, 7200)

    dry = gc(bank_registry, grace_seconds=3600, dry_run=True)
    assert (dry.deleted, dry.kept_in_grace, dry.dry_run) == ((old,), 1, True)
    assert bank_registry.store.exists(old)

    done = gc(bank_registry, grace_seconds=3600)
    assert done.deleted == (old,) and done.bytes_freed == len(b"crashed before its row was written")
    assert not bank_registry.store.exists(old) and bank_registry.store.exists(new)
    assert gc(bank_registry, grace_seconds=0).deleted == (new,)
    assert fsck(bank_registry).ok  # every referenced blob survived
    assert gc(bank_registry, grace_seconds=0).deleted == ()


def test_gc_keeps_an_old_orphan_a_writer_re_puts_while_gc_runs(bank_registry, monkeypatch):
    data = b"an old orphan a new user is about to reference"
    digest = bank_registry.store.put_bytes(data)
    _age(bank_registry, digest, 7200)
    listed = bank_registry.store.iter_blobs

    def list_then_writer_re_puts():
        yield from listed()
        bank_registry.store.put_bytes(data)  # a writer between gc's listing and its deletes

    monkeypatch.setattr(bank_registry.store, "iter_blobs", list_then_writer_re_puts)
    result = gc(bank_registry, grace_seconds=3600)
    assert result.deleted == () and result.kept_in_grace == 1
    assert bank_registry.store.get_bytes(digest) == data


def test_gc_never_touches_referenced_blobs_however_old(bank_registry):
    bank = get_bank(bank_registry, TASK)
    for anchor in bank.anchors:
        _age(bank_registry, anchor.adapter_blob, 10 * 86400)
    result = gc(bank_registry, grace_seconds=0)
    assert result.deleted == () and result.referenced == 1 + 2 * len(bank.anchors)


def test_fsck_reports_missing_and_corrupt_blobs_and_orphans(bank_registry):
    assert fsck(bank_registry).ok
    bank = get_bank(bank_registry, TASK)
    missing, corrupt = bank.anchors[0].adapter_blob, bank.anchors[1].adapter_blob
    _blob_path(bank_registry, missing).unlink()
    path = _blob_path(bank_registry, corrupt)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, different content: only the digest check can see it
    _overwrite(path, bytes(data))
    orphan = bank_registry.store.put_bytes(b"orphan")

    report = fsck(bank_registry)
    assert not report.ok
    assert [(p.table, p.column, p.digest, p.problem) for p in report.missing] == [
        ("anchors", "adapter_blob", missing, "missing")
    ]
    assert [(p.digest, p.problem) for p in report.corrupt] == [(corrupt, "corrupt")]
    assert report.orphans == (orphan,) and report.orphan_bytes == len(b"orphan")
    assert report.to_dict()["ok"] is False
    # Without re-hashing, the same-size corruption goes unseen but the missing blob does not.
    quick = fsck(bank_registry, verify=False)
    assert quick.corrupt == () and len(quick.missing) == 1


def test_fsck_sees_a_truncated_blob_without_rehashing(bank_registry):
    user = add_user(bank_registry, user_id="kim", task=TASK, profile=movie_user("kim"))
    _overwrite(_blob_path(bank_registry, user.profile_blob), b"{}")
    report = fsck(bank_registry, verify=False)
    assert [(p.table, p.row, p.problem) for p in report.corrupt] == [
        ("users", "kim", "size_mismatch")
    ]


def _blob_size(ctx, digest: str) -> int:
    return len(ctx.store.get_bytes(digest))


def test_storage_report_math(bank_registry, tiny_shapes):
    bank = get_bank(bank_registry, TASK)
    users = [
        add_user(bank_registry, user_id=uid, task=TASK, profile=movie_user(uid, n))
        for uid, n in (("u1", 4), ("u2", 6), ("u3", 9))
    ]
    stack = adapt_user(bank_registry, "u2", AdaptRequest(shots=2, max_steps=1))
    report = storage_report(bank_registry)

    assert report["by_kind"]["bank"] == bank.total_bytes
    assert report["by_kind"]["profiles"] == sum(
        _blob_size(bank_registry, u.profile_blob) for u in users
    )
    assert report["by_kind"]["embeddings"] == 3 * TINY_EMBEDDER_DIM * 4
    assert report["by_kind"]["stacks"] == stack.bytes
    assert report["total_bytes"] == sum(
        report["by_kind"][k] for k in ("bank", "stacks", "embeddings", "profiles")
    )
    per_user = [get_user(bank_registry, u.user_id).bytes for u in users]
    profile_bytes = _blob_size(bank_registry, users[1].profile_blob)
    assert per_user[1] == profile_bytes + TINY_EMBEDDER_DIM * 4 + stack.bytes  # float32 vector
    assert report["per_user_bytes"]["mean"] == pytest.approx(np.mean(per_user))
    assert report["per_user_bytes"]["p50"] == pytest.approx(np.percentile(per_user, 50))
    assert report["per_user_bytes"]["p99"] == pytest.approx(np.percentile(per_user, 99))

    one_lora = OPPU_RANK * sum(o + i for o, i in tiny_shapes.values())
    assert report["oppu_equivalent_bytes"] == 3 * one_lora * 2
    assert report["oppu_equivalent_bytes_fp32"] == 3 * one_lora * 4
    assert report["ratio_vs_oppu"] == pytest.approx(
        report["total_bytes"] / report["oppu_equivalent_bytes"]
    )
    assert report["users"] == 3 and report["stale_stacks"] == 0 and report["stacks"] == 1
    assert report["current_stack_formats"] == {stack.dtype: 1}
    assert report["default_stack_format"] == AdaptRequest.dtype
    adapt_user(bank_registry, "u1", AdaptRequest(shots=2, max_steps=1, dtype="nf4"))
    adapt_user(bank_registry, "u2", AdaptRequest(shots=2, max_steps=1, dtype="int8"))
    formats = storage_report(bank_registry)["current_stack_formats"]
    assert formats == {"int8": 1, "nf4": 1}  # u2's first stack is no longer current


def test_storage_report_on_an_empty_registry(registry):
    report = storage_report(registry)
    assert report["total_bytes"] == 0 and report["users"] == 0
    assert report["ratio_vs_oppu"] is None and report["per_user_bytes"]["p99"] == 0.0


def test_eval_runs_are_recorded(registry):
    first = record_eval_run(registry, task=TASK, config={"shots": 3}, results={"acc": 0.5})
    second = record_eval_run(registry, task="citation", config={}, results={})
    assert second > first
    assert [r["id"] for r in list_eval_runs(registry)] == [second, first]
    assert list_eval_runs(registry, task=TASK)[0]["results"] == {"acc": 0.5}


def test_a_blob_gc_removed_before_its_row_committed_is_written_back(registry):
    from mta.registry.blobrefs import put_blob, reassert_blobs

    pending = put_blob(registry, b"old bytes written again", "profile")
    registry.store.delete(pending.digest)  # what a concurrent gc did
    reassert_blobs(registry, [pending])
    assert registry.store.get_bytes(pending.digest) == b"old bytes written again"


def test_init_on_an_unreachable_database_is_one_clear_error(tmp_path):
    from mta.registry.context import RegistryContext
    from mta.registry.errors import RegistryError
    from mta.registry.service import init_registry

    ctx = RegistryContext.open(
        "postgresql://nobody:pw@127.0.0.1:9/none", f"file://{tmp_path}/s", tmp_path / "c"
    )
    with pytest.raises(RegistryError, match="cannot migrate the registry at postgresql"):
        init_registry(ctx)
