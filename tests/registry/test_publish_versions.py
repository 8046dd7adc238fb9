"""`publish_users`: versioned names with a grace period, recency selection, the byte bound,
and the base model each published adapter belongs to."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import update

from mta.registry.base_weights import base_weights
from mta.registry.context import RegistryContext
from mta.registry.identity import (
    ENGINE_NAME_SEPARATOR,
    AdapterIdentity,
    engine_name,
    parse_engine_name,
)
from mta.registry.models import SqlBank, SqlRecipe
from mta.registry.names import USER_ID_PATTERN
from mta.registry.publish.request import vllm_max_lora_rank
from mta.registry.publish.targets import MANIFEST_NAME
from mta.registry.service import (
    AdaptRequest,
    PublishRequest,
    adapt_user,
    adapter_identity,
    add_user,
    delete_user,
    export_user,
    fuse_user,
    publish_users,
)
from tests.fixtures_model import fresh_tiny_model
from tests.support import TASK, movie_user

SERVED = "HuggingFaceTB/SmolLM2-135M-Instruct"
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def add_users(ctx: RegistryContext, ids: tuple[str, ...]) -> None:
    for n, user_id in enumerate(ids):
        add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6, seed=n))
        fuse_user(ctx, user_id)


def manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def names_on_disk(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.name != MANIFEST_NAME}


def set_adapter_time(ctx: RegistryContext, user_id: str, moment: datetime) -> None:
    """Backdate a fused user's latest recipe (their adapter's time when they have no stack)."""
    with ctx.session_factory() as session:
        session.execute(
            update(SqlRecipe).where(SqlRecipe.user_id == user_id).values(created_at=moment)
        )
        session.commit()


def test_a_new_adapter_is_a_new_name_and_the_old_one_lasts_the_grace(
    bank_registry, tmp_path, tiny_model_dir
):
    from peft import PeftModel

    add_users(bank_registry, ("alice", "bob"))
    adapt_user(bank_registry, "alice", AdaptRequest(shots=2, max_steps=1, seed=0))
    out = tmp_path / "loras"
    first = publish_users(bank_registry, str(out), now=T0)
    old = first.names["alice"]
    old_bytes = (out / old / "adapter_model.safetensors").read_bytes()

    adapt_user(bank_registry, "alice", AdaptRequest(shots=2, max_steps=1, seed=1))
    t1 = T0 + timedelta(seconds=10)
    second = publish_users(bank_registry, str(out), PublishRequest(keep_previous=60), now=t1)
    new = second.names["alice"]
    assert second.written == ("alice",) and new != old and new.startswith("alice~")
    assert (out / new / "adapter_model.safetensors").read_bytes() != old_bytes
    entry = manifest(out)["users"]["alice"]
    assert entry["name"] == new
    assert entry["previous"] == [{"name": old, "expires_at": "2030-01-01T00:01:10+00:00"}]
    # In-flight requests on the old name still load it, byte for byte what it was.
    assert (out / old / "adapter_model.safetensors").read_bytes() == old_bytes
    PeftModel.from_pretrained(fresh_tiny_model(tiny_model_dir), out / old)

    during = publish_users(
        bank_registry, str(out), PublishRequest(keep_previous=60), now=t1 + timedelta(seconds=59)
    )
    assert during.retired == () and not during.manifest_written and (out / old).is_dir()
    after = publish_users(bank_registry, str(out), now=t1 + timedelta(seconds=61))
    assert after.retired == (old,) and not (out / old).exists()
    assert manifest(out)["users"]["alice"]["previous"] == [] and manifest(out)["removing"] == []
    assert names_on_disk(out) == {new, first.names["bob"]}

    # A deleted user's names all go on the next round, the one in its grace period too.
    adapt_user(bank_registry, "alice", AdaptRequest(shots=2, max_steps=1, seed=2))
    newest = publish_users(bank_registry, str(out), now=t1 + timedelta(seconds=70)).names["alice"]
    assert names_on_disk(out) == {new, newest, first.names["bob"]}
    delete_user(bank_registry, "alice")
    gone = publish_users(bank_registry, str(out), now=t1 + timedelta(seconds=71))
    assert gone.removed == ("alice",) and set(gone.retired) == {new, newest}
    assert names_on_disk(out) == {first.names["bob"]}
    assert "alice" not in (out / MANIFEST_NAME).read_text()  # the deleted id is named nowhere


def test_keep_previous_zero_drops_the_old_name_in_the_same_round(bank_registry, tmp_path):
    add_users(bank_registry, ("alice",))
    out = tmp_path / "loras"
    old = publish_users(bank_registry, str(out)).names["alice"]
    adapt_user(bank_registry, "alice", AdaptRequest(shots=2, max_steps=1))
    result = publish_users(bank_registry, str(out), PublishRequest(keep_previous=0))
    assert result.retired == (old,) and names_on_disk(out) == {result.names["alice"]}
    # It was the current name a moment ago: it goes after the new manifest, which lists it
    # under `removing` so that a round dying before the removal has the next one finish it.
    assert manifest(out)["removing"] == [old]
    (out / old).mkdir()  # as if that round had died before removing it
    assert publish_users(bank_registry, str(out)).manifest_written
    assert manifest(out)["removing"] == [] and not (out / old).exists()


def test_engine_names_split_one_way_and_none_is_a_prefix_of_another():
    assert not USER_ID_PATTERN.fullmatch(ENGINE_NAME_SEPARATOR)  # outside the id alphabet

    def identity(user_id: str) -> AdapterIdentity:
        return AdapterIdentity(user_id, (("d" * 64, 1.0),), "cat", {}, None, "m", 1, None)

    bob = engine_name(identity("bob"))
    version = bob.split(ENGINE_NAME_SEPARATOR)[1]
    # Ids that are prefixes of each other, one built to extend bob's name if "@" separated it.
    ids = ["bob", f"bob@{version}x", "alice", "alice2", "mta", "a.b", "a", "a-b", "a@b"]
    names = [engine_name(identity(u)) for u in ids]
    assert names[0] == bob and len(set(names)) == len(ids)
    for name, user_id in zip(names, ids, strict=True):
        assert parse_engine_name(name) == (user_id, name[-12:])
        assert not MANIFEST_NAME.startswith(name) and not name.startswith(MANIFEST_NAME)
        assert [other for other in names if other != name and other.startswith(name)] == []
    # The options are part of the name: other bytes, another name.
    assert engine_name(identity("bob"), dtype="fp16") != bob
    for bad in (
        "bob",
        "bob~",
        "bob~0123456789aZ",
        "~0123456789ab",
        "..~0123456789ab",
        "a/b~0123456789ab",
    ):
        assert parse_engine_name(bad) is None


def test_vllm_max_lora_rank_is_the_next_allowed_value():
    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 17, 300, 321, 512)] == [
        1,
        8,
        8,
        16,
        32,
        320,
        512,
        512,
    ]
    assert vllm_max_lora_rank(513) is None


def test_active_since_and_named_users_select_the_round(bank_registry, tmp_path):
    add_users(bank_registry, ("alice", "bob", "carol"))
    now = datetime.now(timezone.utc)
    set_adapter_time(bank_registry, "bob", now - timedelta(days=2))
    set_adapter_time(bank_registry, "carol", now - timedelta(days=3))
    out = tmp_path / "loras"
    recent = publish_users(bank_registry, str(out), PublishRequest(active_since=3600), now=now)
    assert recent.written == ("alice",)
    both = publish_users(
        bank_registry,
        str(out),
        PublishRequest(active_since=3 * 86400 - 60, user_ids=("carol",)),
        now=now,
    )
    assert both.written == ("bob", "carol") and both.unchanged == ("alice",)
    entry = manifest(out)["users"]["bob"]
    assert datetime.fromisoformat(entry["adapter_at"]) < now - timedelta(days=1)


def test_max_bytes_keeps_the_newest_working_set(bank_registry, tmp_path):
    add_users(bank_registry, ("a", "b", "c"))
    now = datetime.now(timezone.utc)
    set_adapter_time(bank_registry, "a", now - timedelta(hours=1))
    set_adapter_time(bank_registry, "b", now - timedelta(hours=2))
    set_adapter_time(bank_registry, "c", now - timedelta(hours=3))
    out = tmp_path / "loras"
    everyone = publish_users(bank_registry, str(out), now=now)
    size = manifest(out)["users"]["a"]["bytes"]
    assert {e["bytes"] for e in manifest(out)["users"].values()} == {size}

    bounded = publish_users(
        bank_registry, str(out), PublishRequest(max_bytes=2 * size + 1), now=now
    )
    assert bounded.evicted == ("c",) and bounded.retired == (everyone.names["c"],)
    assert sorted(manifest(out)["users"]) == ["a", "b"] and bounded.published_bytes == 2 * size
    assert names_on_disk(out) == {everyone.names["a"], everyone.names["b"]}

    # Users named for this round come first; the others keep what is left, newest first.
    later = now + timedelta(minutes=1)
    asked = publish_users(
        bank_registry, str(out), PublishRequest(user_ids=("c",), max_bytes=2 * size), now=later
    )
    assert asked.written == ("c",) and asked.evicted == ("a",)
    assert sorted(manifest(out)["users"]) == ["b", "c"]
    assert names_on_disk(out) == {everyone.names["b"], everyone.names["c"]}


def test_a_format_1_folder_is_replaced_and_kept_for_the_grace(bank_registry, tmp_path):
    add_users(bank_registry, ("alice",))
    out = tmp_path / "loras"
    (out / "alice").mkdir(parents=True)
    (out / "alice" / "adapter_config.json").write_text("{}")
    legacy = {"format": 1, "users": {"alice": {"identity": "x", "bytes": 2, "folder": "alice"}}}
    (out / MANIFEST_NAME).write_text(json.dumps(legacy))
    result = publish_users(bank_registry, str(out), now=T0)
    assert result.written == ("alice",) and (out / "alice").is_dir()
    assert manifest(out)["format"] == 2
    assert manifest(out)["users"]["alice"]["previous"][0]["name"] == "alice"
    publish_users(bank_registry, str(out), now=T0 + timedelta(hours=1))
    assert names_on_disk(out) == {result.names["alice"]}


def test_the_base_model_and_its_weights_digest_are_recorded(
    bank_registry, tmp_path, tiny_model_dir
):
    add_users(bank_registry, ("alice",))
    out = tmp_path / "loras"
    result = publish_users(bank_registry, str(out), PublishRequest(served_model_name=SERVED))
    weights = tiny_model_dir / "model.safetensors"
    expected = {
        "name": str(tiny_model_dir),
        "weights": str(tiny_model_dir),
        "format": "safetensors",
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert manifest(out)["users"]["alice"]["base_model"] == expected
    assert result.warnings == ()  # trained on a plain safetensors model: nothing to say
    export = export_user(bank_registry, adapter_identity(bank_registry, "alice"), None)
    assert (export.base_model, export.base_sha256) == (str(tiny_model_dir), expected["sha256"])


def test_a_gguf_trained_bank_published_under_a_hub_name_warns(bank_registry, tmp_path):
    gguf = tmp_path / "model.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + bytes(1000))
    with bank_registry.session_factory() as session:  # as if the bank were trained on it
        session.execute(update(SqlBank).values(base_model=str(gguf)))
        session.commit()
    add_users(bank_registry, ("alice", "bob"))
    out = tmp_path / "loras"
    hub = publish_users(bank_registry, str(out), PublishRequest(served_model_name=SERVED))
    assert len(hub.warnings) == 1
    assert hub.warnings[0].startswith("2 user(s) trained on ") and SERVED in hub.warnings[0]
    assert "dequantized from model.Q4_1.gguf" in hub.warnings[0]
    base = manifest(out)["users"]["alice"]["base_model"]
    assert (base["format"], base["weights"]) == ("gguf", str(gguf))
    assert base["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    # Published for the GGUF itself (the default: the bank's base model): no warning.
    assert publish_users(bank_registry, str(tmp_path / "own")).warnings == ()


def test_base_digests_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    import os

    from mta.registry import base_weights as module

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(b"one")
    (folder / "b.safetensors").write_bytes(b"two")
    first = base_weights(str(folder), tmp_path / "cache")
    lines = "".join(
        f"{n} {hashlib.sha256(d).hexdigest()}\n"
        for n, d in (("a.safetensors", b"one"), ("b.safetensors", b"two"))
    )
    assert first.sha256 == hashlib.sha256(lines.encode()).hexdigest()
    assert (tmp_path / "cache" / module.DIGEST_CACHE_FILE).is_file()

    module._memo.clear()  # a new process: only the file cache is left
    monkeypatch.setattr(module, "sha256_file", lambda path: pytest.fail(f"rehashed {path}"))
    assert base_weights(str(folder), tmp_path / "cache") == first
    monkeypatch.undo()
    (folder / "b.safetensors").write_bytes(b"TWO")
    os.utime(folder / "b.safetensors", ns=(1, 1))
    assert base_weights(str(folder), tmp_path / "cache").sha256 != first.sha256
    missing = base_weights("no-such-org/no-such-model", tmp_path / "cache")
    assert (missing.weights, missing.sha256) == (None, None)
