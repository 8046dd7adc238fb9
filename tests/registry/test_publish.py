"""`publish_users` to a folder: byte-equal to `export_user`, incremental, atomic, and safe.

Versioned names, grace periods, selection by recency and the byte bound are in
`test_publish_versions.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from mta.registry.context import RegistryContext
from mta.registry.errors import InvalidInputError, NotFoundError
from mta.registry.publish.request import default_served_name
from mta.registry.publish.targets import MANIFEST_NAME, open_target
from mta.registry.service import (
    AdaptRequest,
    FuseRequest,
    PublishRequest,
    adapt_user,
    adapter_identity,
    add_user,
    delete_user,
    engine_name,
    export_user,
    fuse_user,
    publish_users,
    watch_publish,
)
from mta.storage import UnknownSchemeError
from tests.fixtures_model import fresh_tiny_model
from tests.support import TASK, movie_user

SERVED = "HuggingFaceTB/SmolLM2-135M-Instruct"
USERS = ("alice", "bob@example.org", "carol.d")


def add_users(ctx: RegistryContext, ids=USERS, *, fuse: bool = True) -> None:
    """Register (and fuse) users with distinct profiles."""
    for n, user_id in enumerate(ids):
        add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6, seed=n))
        if fuse:
            fuse_user(ctx, user_id)


def folder_files(folder: Path) -> dict[str, bytes]:
    """File name -> bytes of a PEFT folder."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def manifest(root: Path) -> dict:
    """The target's manifest as JSON."""
    return json.loads((root / MANIFEST_NAME).read_text())


def folder(root: Path, user_id: str) -> Path:
    """The user's current published folder, as the manifest names it."""
    return root / manifest(root)["users"][user_id]["name"]


def test_published_folders_equal_export_and_load_in_peft(bank_registry, tmp_path, tiny_model_dir):
    from peft import PeftModel

    add_users(bank_registry)
    adapt_user(bank_registry, "alice", AdaptRequest(shots=2, max_steps=1))  # one user with a stack
    out = tmp_path / "loras"
    result = publish_users(bank_registry, str(out), PublishRequest(served_model_name=SERVED))

    assert result.written == tuple(sorted(USERS)) and result.manifest_written
    listed = manifest(out)["users"]
    assert sorted(listed) == sorted(USERS)
    names = {
        u: engine_name(adapter_identity(bank_registry, u), base_model_name=SERVED, dtype="fp16")
        for u in USERS
    }
    assert result.names == names and {u: e["name"] for u, e in listed.items()} == names
    assert sorted(p.name for p in out.iterdir()) == sorted([*names.values(), MANIFEST_NAME])
    for user_id in USERS:
        published = folder_files(out / names[user_id])
        assert set(published) == {"adapter_config.json", "adapter_model.safetensors"}
        # A fresh export (cache emptied) of the same options is the same bytes.
        shutil.rmtree(bank_registry.adapter_cache.root, ignore_errors=True)
        export_user(
            bank_registry,
            adapter_identity(bank_registry, user_id),
            tmp_path / "export" / user_id,
            base_model_name=SERVED,
            dtype="fp16",
        )
        assert published == folder_files(tmp_path / "export" / user_id)
        config = json.loads(published["adapter_config.json"])
        assert config["base_model_name_or_path"] == SERVED
        entry = listed[user_id]
        identity = adapter_identity(bank_registry, user_id).digest(
            base_model_name=SERVED, dtype="fp16"
        )
        assert entry["identity"] == identity and entry["previous"] == []
        assert entry["bytes"] == sum(len(b) for b in published.values())
        # Two rank-8 anchors (+ alice's rank-1 stack): the next vLLM --max-lora-rank up.
        expected = (17, 32) if user_id == "alice" else (16, 16)
        assert (entry["dtype"], entry["rank"], entry["max_lora_rank"]) == ("fp16", *expected)
        model = PeftModel.from_pretrained(fresh_tiny_model(tiny_model_dir), out / names[user_id])
        assert model.peft_config["default"].base_model_name_or_path == SERVED
    assert result.published_bytes == sum(e["bytes"] for e in listed.values())


def test_republish_rewrites_only_the_changed_user(bank_registry, tmp_path):
    add_users(bank_registry)
    out = tmp_path / "loras"
    publish_users(bank_registry, str(out))
    inodes = {u: folder(out, u).stat().st_ino for u in USERS}
    before = (out / MANIFEST_NAME).read_bytes()

    again = publish_users(bank_registry, str(out))
    assert again.written == () and again.unchanged == tuple(sorted(USERS))
    assert not again.manifest_written and (out / MANIFEST_NAME).read_bytes() == before
    assert {u: folder(out, u).stat().st_ino for u in USERS} == inodes

    adapt_user(bank_registry, "bob@example.org", AdaptRequest(shots=2, max_steps=1))
    third = publish_users(bank_registry, str(out))
    assert third.written == ("bob@example.org",) and third.manifest_written
    assert third.bytes_written == manifest(out)["users"]["bob@example.org"]["bytes"]
    now = {u: folder(out, u).stat().st_ino for u in USERS}
    assert [u for u in USERS if now[u] != inodes[u]] == ["bob@example.org"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left

    # A folder removed behind the publisher's back is noticed and written again.
    shutil.rmtree(folder(out, "alice"))
    assert publish_users(bank_registry, str(out)).written == ("alice",)


def test_deleted_users_folder_is_removed_and_unselected_users_are_kept(bank_registry, tmp_path):
    add_users(bank_registry)
    out = tmp_path / "loras"
    publish_users(bank_registry, str(out))

    delete_user(bank_registry, "carol.d")
    fuse_user(bank_registry, "alice", FuseRequest(top_k=3))  # changed, but not selected below
    carol = folder(out, "carol.d")
    result = publish_users(bank_registry, str(out), PublishRequest(user_ids=("bob@example.org",)))
    assert result.removed == ("carol.d",) and result.unchanged == ("bob@example.org",)
    assert not carol.exists() and result.retired == (carol.name,)
    listed = manifest(out)["users"]
    assert sorted(listed) == ["alice", "bob@example.org"]  # alice carried over, not rewritten
    assert listed["alice"]["identity"] != adapter_identity(bank_registry, "alice").digest(
        base_model_name=listed["alice"]["served_model_name"], dtype="fp16"
    )
    assert publish_users(bank_registry, str(out)).written == ("alice",)


def test_unfused_users_are_skipped_and_unsafe_ids_refused(bank_registry, tmp_path):
    add_users(bank_registry, ("alice", ".hidden", MANIFEST_NAME))
    add_users(bank_registry, ("dave",), fuse=False)
    out = tmp_path / "loras"
    result = publish_users(bank_registry, str(out))
    assert result.written == ("alice", MANIFEST_NAME) and result.skipped == ("dave",)
    assert result.refused == (".hidden",)
    assert sorted(manifest(out)["users"]) == ["alice", MANIFEST_NAME]  # its folder has a ~hex
    assert folder(out, MANIFEST_NAME).name.startswith(MANIFEST_NAME + "~")

    # Named explicitly, the same users are errors, raised before anything is written.
    def refused(**fields):
        return publish_users(bank_registry, str(tmp_path / "x"), PublishRequest(**fields))

    with pytest.raises(InvalidInputError, match=r"'\.hidden' cannot be published: ids starting"):
        refused(user_ids=("alice", ".hidden"))
    with pytest.raises(NotFoundError, match="no recipe"):
        refused(user_ids=("dave",))
    with pytest.raises(NotFoundError, match="no such user: 'zed'"):
        refused(user_ids=("zed",))
    with pytest.raises(NotFoundError, match="no bank for task 'citation'"):
        refused(task="citation")
    with pytest.raises(InvalidInputError, match="keep_previous"):
        refused(keep_previous=-1)
    with pytest.raises(InvalidInputError, match="max_bytes"):
        refused(max_bytes=0)
    assert not (tmp_path / "x" / MANIFEST_NAME).exists()
    assert [p.name for p in (tmp_path / "x").iterdir()] == []

    # A user fused after being skipped is published; one later left without an adapter (deleted
    # and added again under the same id) loses the folder that is no longer theirs.
    fuse_user(bank_registry, "dave")
    assert publish_users(bank_registry, str(out), PublishRequest(task=TASK)).written == ("dave",)
    dave = folder(out, "dave")
    delete_user(bank_registry, "dave")
    add_users(bank_registry, ("dave",), fuse=False)
    result = publish_users(bank_registry, str(out))
    assert result.removed == ("dave",) and result.skipped == ("dave",)
    assert not dave.exists() and "dave" not in manifest(out)["users"]


def test_default_served_name_is_the_hub_id_of_an_alias(bank_registry, tmp_path, tiny_model_dir):
    assert default_served_name("smollm2") == SERVED
    assert default_served_name("org/model") == "org/model"
    add_users(bank_registry, ("alice",))
    out = tmp_path / "loras"
    result = publish_users(bank_registry, str(out), PublishRequest(dtype="fp32", max_rank=4))
    config = json.loads((folder(out, "alice") / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)  # a local path stays
    assert config["r"] == 4
    entry = manifest(out)["users"]["alice"]
    assert (entry["dtype"], entry["max_rank"], entry["rank"]) == ("fp32", 4, 4)
    assert (entry["max_lora_rank"], result.max_lora_rank, result.rank) == (8, 8, 4)
    # Other options are another identity, so another name: every folder is rewritten.
    again = publish_users(bank_registry, str(out))
    assert again.written == ("alice",) and again.names["alice"] != entry["name"]


def test_watch_runs_rounds_and_survives_a_bad_round(bank_registry, tmp_path):
    add_users(bank_registry)
    out = tmp_path / "loras"
    results, waits = [], []

    def between_rounds(seconds: float) -> None:
        waits.append(seconds)
        delete_user(bank_registry, "alice")

    last = watch_publish(
        bank_registry,
        str(out),
        interval=5,
        rounds=2,
        on_round=results.append,
        sleep=between_rounds,
    )
    assert waits == [5] and len(results) == 2 and last is results[-1]
    assert len(results[0].written) == 3 and results[1].removed == ("alice",)
    assert results[1].unchanged == ("bob@example.org", "carol.d")

    (out / MANIFEST_NAME).write_text("{not json")
    errors: list[Exception] = []
    last = watch_publish(
        bank_registry, str(out), interval=1, rounds=2, on_error=errors.append, sleep=lambda _: None
    )
    assert last is None
    assert len(errors) == 2 and "is not JSON" in str(errors[0])
    with pytest.raises(InvalidInputError):
        watch_publish(bank_registry, str(out), interval=1, rounds=1)
    with pytest.raises(InvalidInputError, match="positive"):
        watch_publish(bank_registry, str(out), interval=0)


def test_manifest_entries_never_reach_paths_outside_the_target(bank_registry, tmp_path):
    out = tmp_path / "loras"
    (tmp_path / "victim").mkdir()
    out.mkdir()
    name = "alice~0123456789ab"
    later = "2999-01-01T00:00:00+00:00"
    bad_manifests = [{"format": 1, "users": {bad: {}}} for bad in ("../victim", ".mta-stage-x")] + [
        {"format": 2, "users": {"alice": {"name": "../victim"}}},
        {"format": 2, "users": {"alice": {"name": "bob~0123456789ab"}}},  # another user's
        {"format": 2, "users": {"alice": {"name": MANIFEST_NAME}}},
        {
            "format": 2,
            "users": {
                "alice": {"name": name, "previous": [{"name": "../victim", "expires_at": later}]}
            },
        },
        {"format": 2, "users": {"alice": {"name": name, "previous": [{"name": name}]}}},
        {"format": 2, "users": {}, "removing": ["../victim"]},
        {"format": 2, "users": {}, "removing": [MANIFEST_NAME]},
        {"format": 2, "users": {}, "removing": ["alice~../../x"]},
        {"format": 3, "users": {}},
    ]
    for bad in bad_manifests:
        (out / MANIFEST_NAME).write_text(json.dumps(bad))
        with pytest.raises(InvalidInputError):
            publish_users(bank_registry, str(out))
    assert (tmp_path / "victim").is_dir()


def test_folder_target_sweeps_stale_staging_and_rejects_bad_urls(tmp_path):
    root = tmp_path / "loras"
    target = open_target(f"FILE://{root}")
    target.prepare()
    stale, fresh = root / ".mta-stage-old", root / ".mta-stage-new"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    target.prepare()
    assert not stale.exists() and fresh.exists()  # a running publisher's folder is kept
    with pytest.raises(UnknownSchemeError, match="known: file://, s3://"):
        open_target("gs://bucket/x")
    (tmp_path / "file").write_text("")
    with pytest.raises(Exception, match="not a folder"):
        open_target(str(tmp_path / "file")).prepare()


# Stages a folder as `mta publish` does, prints its name, then waits (to be killed or kept).
STAGING_CHILD = """
import sys, time
from mta.registry.publish.targets import open_target
with open_target(sys.argv[1]).folder_writer("someone") as staged:
    (staged / "adapter_model.safetensors").write_bytes(b"half an adapter")
    print(staged.name, flush=True)
    time.sleep(600)
"""


def test_a_round_sweeps_a_killed_publishers_staging_but_not_a_live_ones(bank_registry, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "loras"
    out.mkdir()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", STAGING_CHILD, str(out)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        killed, live = (out / child.stdout.readline().strip() for child in children)
        children[0].send_signal(signal.SIGKILL)  # `kill -9` mid-publish: no cleanup runs
        assert children[0].wait(timeout=60) == -signal.SIGKILL
        assert killed.is_dir() and live.is_dir()
        os.utime(killed, (time.time() - 300, time.time() - 300))  # minutes, not hours, old
        os.utime(live, (time.time() - 7200, time.time() - 7200))  # a slow, live publisher
        add_users(bank_registry, ids=("alice",))
        result = publish_users(bank_registry, str(out))
        assert result.written == ("alice",)
        assert not killed.exists()  # the next round removes the leftover
        assert live.is_dir() and (live / "adapter_model.safetensors").exists()
    finally:
        for child in children:
            child.kill()
            child.wait(timeout=60)
    assert publish_users(bank_registry, str(out)).unchanged == ("alice",)
    assert not live.exists()  # that publisher died too: its folder is a leftover now
    assert not [p.name for p in out.iterdir() if p.name.startswith(".mta-")]


def s3_folder(s3_client, bucket: str, prefix: str) -> dict[str, bytes]:
    """Key (below `prefix`) -> bytes of every object under `prefix`."""
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    return {
        key[len(prefix) :]: s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for key in keys
    }


@pytest.mark.integration
def test_publish_to_s3(bank_registry, s3_client, s3_store_url, tmp_path, tiny_model_dir):
    from peft import PeftModel

    from mta.storage import StorageError

    bucket = s3_store_url[len("s3://") :].split("/")[0]
    add_users(bank_registry)
    request = PublishRequest(served_model_name=SERVED)
    first = publish_users(bank_registry, f"s3://{bucket}/loras", request)
    assert first.written == tuple(sorted(USERS)) and first.target == f"s3://{bucket}/loras"
    names = first.names
    objects = s3_folder(s3_client, bucket, "loras/")
    files = ("adapter_config.json", "adapter_model.safetensors")
    assert set(objects) == {f"{names[u]}/{f}" for u in USERS for f in files} | {MANIFEST_NAME}
    for user_id in USERS:
        exported = tmp_path / "export" / user_id
        export_user(
            bank_registry,
            adapter_identity(bank_registry, user_id),
            exported,
            base_model_name=SERVED,
            dtype="fp16",
        )
        assert {f: objects[f"{names[user_id]}/{f}"] for f in files} == folder_files(exported)
    listed = json.loads(objects[MANIFEST_NAME])["users"]
    alice = names["alice"]
    assert listed["alice"]["bytes"] == sum(len(objects[f"{alice}/{f}"]) for f in files)
    downloaded = tmp_path / "from-s3" / alice
    downloaded.mkdir(parents=True)
    for name in files:
        (downloaded / name).write_bytes(objects[f"{alice}/{name}"])
    PeftModel.from_pretrained(fresh_tiny_model(tiny_model_dir), downloaded)

    again = publish_users(bank_registry, f"s3://{bucket}/loras", request)
    assert again.written == () and not again.manifest_written
    adapt_user(bank_registry, "bob@example.org", AdaptRequest(shots=2, max_steps=1))
    delete_user(bank_registry, "carol.d")
    third = publish_users(bank_registry, f"s3://{bucket}/loras/", request)
    assert third.written == ("bob@example.org",) and third.removed == ("carol.d",)
    objects = s3_folder(s3_client, bucket, "loras/")
    assert not [key for key in objects if key.startswith("carol.d")]
    listed = json.loads(objects[MANIFEST_NAME])["users"]
    assert sorted(listed) == ["alice", "bob@example.org"]
    bob = third.names["bob@example.org"]
    assert listed["bob@example.org"]["previous"][0]["name"] == names["bob@example.org"]
    assert f"{names['bob@example.org']}/{files[1]}" in objects  # in its grace period
    export_user(
        bank_registry,
        adapter_identity(bank_registry, "bob@example.org"),
        tmp_path / "bob",
        base_model_name=SERVED,
        dtype="fp16",
    )
    assert objects[f"{bob}/adapter_model.safetensors"] == (
        (tmp_path / "bob" / "adapter_model.safetensors").read_bytes()
    )

    with pytest.raises(StorageError, match="does not exist"):
        publish_users(bank_registry, f"s3://no-such-bucket-{bucket}/loras")
