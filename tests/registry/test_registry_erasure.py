"""Erasure reaches everything derived from a user: exports fused from a dropped anchor, the
bank config's member lists, and the free pages of the SQLite files."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from mta.registry.context import RegistryContext
from mta.registry.models import REDACTING, SqlBank
from mta.registry.service import (
    AdaptRequest,
    FuseRequest,
    adapt_user,
    adapter_identity,
    add_user,
    delete_user,
    export_user,
    fsck,
    fuse_user,
    gc,
    get_bank,
)
from mta.storage.cache import AdapterCache
from tests.support import TASK, movie_user

# A cluster bank: anchor a2 was trained on carl's history too (as `bank build` records it).
MEMBERS = {"a1": ["a1"], "a2": ["a2", "carl"], "a3": ["a3"], "a4": ["a4"]}


def _record_members(ctx: RegistryContext, members: dict[str, list[str]]) -> None:
    """Give bank v1 the `anchor_members` a `--anchor-data cluster` build would record."""
    with ctx.session() as session:
        session.info[REDACTING] = True  # bank rows are otherwise immutable
        bank = session.scalars(select(SqlBank)).one()
        bank.config = {**bank.config, "anchor_members": members}


def _anchor_digest(ctx: RegistryContext, anchor_id: str) -> str:
    return next(
        a.adapter_blob for a in get_bank(ctx, TASK, "1").anchors if a.anchor_id == anchor_id
    )


def _derived_from(ctx: RegistryContext, digest: str) -> list[str]:
    """Cache entries whose manifest names `digest` among the blobs they were built from."""
    cache = ctx.adapter_cache
    keys = cache.keys()
    return [k for k in keys if digest in (entry_sources(cache.path_for(k)) or [])]


def entry_sources(path: Path) -> list[str] | None:
    """The manifest's sources (read here, not through the cache's own helper)."""
    return json.loads((path / ".mta-entry.json").read_text()).get("sources")


def _add(ctx: RegistryContext, *user_ids: str) -> None:
    for user_id in user_ids:
        add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6))


def test_drop_anchor_removes_every_export_fused_from_it(bank_registry):
    ctx = bank_registry
    _record_members(ctx, MEMBERS)
    _add(ctx, "carl", "bob", "dora")
    a2 = _anchor_digest(ctx, "a2")
    for user_id in ("bob", "dora"):
        fuse_user(ctx, user_id, FuseRequest(top_k=4))  # every anchor, a2 included
    bob = export_user(ctx, adapter_identity(ctx, "bob"), None).cache_path
    dora = export_user(ctx, adapter_identity(ctx, "dora"), None, dtype="fp16").cache_path
    assert sorted(_derived_from(ctx, a2)) == sorted([bob.name, dora.name])

    result = delete_user(ctx, "carl", drop_anchors=True)

    assert result.anchors_dropped == (f"{TASK} v1 a2",)
    assert set(result.users_to_refuse) == {"bob", "dora"}
    assert not bob.exists() and not dora.exists()  # other users' copies of a2's weights
    assert _derived_from(ctx, a2) == [] and result.cache_entries_deleted == 2
    config = get_bank(ctx, TASK, "1").config
    assert "carl" not in json.dumps(config)
    assert config["anchor_members"] == {"a1": ["a1"], "a3": ["a3"], "a4": ["a4"]}
    assert config["redactions"][-1]["anchors"] == ["a2"]
    assert fsck(ctx).ok


def test_an_anchor_named_after_the_user_leaves_no_id_in_the_bank_config(bank_registry):
    ctx = bank_registry
    _record_members(ctx, MEMBERS)
    _add(ctx, "a1")
    delete_user(ctx, "a1", drop_anchors=True)
    text = json.dumps(get_bank(ctx, TASK, "1").config)
    # Neither as a member, nor in the redaction record, nor as a pushed folder's name.
    assert '"a1"' not in text and '/a1"' not in text
    assert get_bank(ctx, TASK, "1").config["redactions"][-1] == {
        "anchors": [],
        "count": 1,
        "at": get_bank(ctx, TASK, "1").config["redactions"][-1]["at"],
    }


def test_fsck_reports_and_gc_removes_an_export_fused_from_an_erased_anchor(
    bank_registry, monkeypatch
):
    """An export that fused a2 before the drop and cached it after (a race) is caught."""
    ctx = bank_registry
    _record_members(ctx, MEMBERS)
    _add(ctx, "carl", "bob")
    fuse_user(ctx, "bob", FuseRequest(top_k=4))
    a2 = _anchor_digest(ctx, "a2")
    real_put = AdapterCache.put

    def drop_meanwhile(cache, key, src_dir, **kwargs):
        monkeypatch.setattr(AdapterCache, "put", real_put)
        delete_user(ctx, "carl", drop_anchors=True)  # the whole drop, between fuse and put
        return real_put(cache, key, src_dir, **kwargs)

    monkeypatch.setattr(AdapterCache, "put", drop_meanwhile)
    late = export_user(ctx, adapter_identity(ctx, "bob"), None).cache_path
    assert late.exists() and _derived_from(ctx, a2) == [late.name]

    report = fsck(ctx)
    assert not report.ok
    assert [(p.table, p.row, p.digest, p.problem) for p in report.corrupt] == [
        ("cache", late.name, a2, "erased_source")
    ]
    assert gc(ctx).cache_entries_removed == 1
    assert not late.exists() and fsck(ctx).ok


def test_gc_removes_entries_that_do_not_record_their_sources(bank_registry, tmp_path):
    ctx = bank_registry
    _add(ctx, "eve")
    fuse_user(ctx, "eve")
    entry = export_user(ctx, adapter_identity(ctx, "eve"), tmp_path / "out").cache_path
    manifest = entry / ".mta-entry.json"
    data = json.loads(manifest.read_text())
    del data["sources"]  # as an older version wrote it: nothing says what it was fused from
    manifest.write_text(json.dumps(data))
    assert fsck(ctx).ok  # not an integrity problem ...
    assert gc(ctx).cache_entries_removed == 1  # ... but it cannot be kept past an erasure
    assert not entry.exists()


# --- the SQLite files -------------------------------------------------------------------------

SECRET_ID = "zq7-erase-me-4711"


def _files_holding(db_file: Path, needle: str) -> list[str]:
    """The registry's SQLite files (database, WAL) whose bytes contain `needle`."""
    files = [db_file, db_file.with_name(db_file.name + "-wal")]
    return [f.name for f in files if f.exists() and needle.encode() in f.read_bytes()]


def _db_file(ctx: RegistryContext) -> Path:
    return Path(ctx.db_url.removeprefix("sqlite:///"))


def test_a_deleted_user_id_is_in_neither_the_database_nor_its_wal(bank_registry):
    ctx = bank_registry
    _add(ctx, SECRET_ID, "kept")
    adapt_user(ctx, SECRET_ID, AdaptRequest(shots=2, max_steps=1))
    export_user(ctx, adapter_identity(ctx, SECRET_ID), None)
    assert _files_holding(_db_file(ctx), SECRET_ID)  # the check can see the id

    delete_user(ctx, SECRET_ID)

    assert _files_holding(_db_file(ctx), SECRET_ID) == []


def test_mta_user_delete_erases_the_id_from_the_sqlite_files(bank_registry, mta):
    ctx = bank_registry
    _add(ctx, SECRET_ID)
    fuse_user(ctx, SECRET_ID)
    root = ["--db", ctx.db_url, "--store", ctx.store_url, "--cache-dir", ctx.cache_dir]
    result = mta(*root, "user", "delete", SECRET_ID)
    assert result.code == 0, result.err
    assert _files_holding(_db_file(ctx), SECRET_ID) == []


def test_drop_anchor_erases_the_anchor_id_from_the_sqlite_files(bank_registry):
    ctx = bank_registry
    _add(ctx, "a1", "bob")
    fuse_user(ctx, "bob", FuseRequest(top_k=4))  # bob's recipe names anchor a1
    assert _files_holding(_db_file(ctx), '"a1"')
    delete_user(ctx, "a1", drop_anchors=True)
    # As JSON (recipes, the bank config): a bare "a1" also occurs in hex digests.
    assert _files_holding(_db_file(ctx), '"a1"') == []
