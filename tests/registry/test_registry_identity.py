"""One adapter identity: its digest changes exactly when the exported bytes change."""

from __future__ import annotations

from pathlib import Path

from mta.registry.context import RegistryContext
from mta.registry.service import (
    AdaptRequest,
    FuseRequest,
    adapt_user,
    adapter_identity,
    add_user,
    export_user,
    fuse_user,
    set_alias,
)
from tests.support import TASK, movie_user


def _exported(ctx: RegistryContext, user_id: str, out: Path) -> tuple[str, bytes]:
    """(identity digest, exported folder bytes) of a user, exported without the cache."""
    import shutil

    shutil.rmtree(ctx.adapter_cache.root, ignore_errors=True)
    export_user(ctx, adapter_identity(ctx, user_id), out)
    files = sorted(p for p in out.iterdir() if p.is_file())
    return adapter_identity(ctx, user_id).digest(), b"".join(p.read_bytes() for p in files)


def test_identity_digest_tracks_exported_bytes(bank_registry, push_bank_fn, tmp_path):
    add_user(bank_registry, user_id="nina", task=TASK, profile=movie_user("nina", 6))
    fuse_user(bank_registry, "nina")
    seen: list[tuple[str, bytes]] = [_exported(bank_registry, "nina", tmp_path / "fused")]

    # Unchanged user: same digest, same bytes (row ids and timestamps do not matter).
    assert _exported(bank_registry, "nina", tmp_path / "again") == seen[0]
    set_alias(bank_registry, TASK, 1, "prod")  # an alias moves; the user's adapter does not
    assert _exported(bank_registry, "nina", tmp_path / "alias") == seen[0]

    adapt_user(bank_registry, "nina", AdaptRequest(shots=2, max_steps=1))  # a new stack
    seen.append(_exported(bank_registry, "nina", tmp_path / "stack"))
    adapt_user(bank_registry, "nina", AdaptRequest(shots=3, max_steps=1, seed=1))  # another stack
    seen.append(_exported(bank_registry, "nina", tmp_path / "stack2"))
    fuse_user(bank_registry, "nina", FuseRequest(top_k=3))  # re-fuse: other anchors, stack dropped
    seen.append(_exported(bank_registry, "nina", tmp_path / "refuse"))
    push_bank_fn(bank_registry, seed=1)  # a new bank version, re-fused against it
    fuse_user(bank_registry, "nina", FuseRequest(top_k=3, bank_ref="2"))
    seen.append(_exported(bank_registry, "nina", tmp_path / "bank2"))

    digests = [digest for digest, _ in seen]
    payloads = [data for _, data in seen]
    assert len(set(digests)) == len(seen) and len(set(payloads)) == len(seen)


def test_export_options_are_part_of_the_digest(bank_registry):
    add_user(bank_registry, user_id="omar", task=TASK, profile=movie_user("omar", 6))
    fuse_user(bank_registry, "omar")
    identity = adapter_identity(bank_registry, "omar")
    variants = {
        identity.digest(),
        identity.digest(max_rank=4),
        identity.digest(dtype="fp16"),
        identity.digest(base_model_name="HuggingFaceTB/SmolLM2-135M-Instruct"),
    }
    assert len(variants) == 4
    named = export_user(
        bank_registry,
        adapter_identity(bank_registry, "omar"),
        None,
        base_model_name="org/served-name",
    )
    config = (named.path / "adapter_config.json").read_text()
    assert '"base_model_name_or_path": "org/served-name"' in config
