"""Export: materialize a user's adapter (fused + current stack) as a cached PEFT folder.

The cache key is the adapter identity (`mta.registry.identity`); every cache hit is
verified (the entry's manifest, and the source blobs it was built from), and an export
that races the user's deletion leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mta.dtypes import torch_dtype
from mta.registry.base_weights import base_weights
from mta.registry.context import RegistryContext
from mta.registry.entities import Export
from mta.registry.errors import InvalidInputError, NotFoundError
from mta.registry.identity import AdapterIdentity
from mta.registry.users.delete import user_cache_prefix, user_is_gone
from mta.registry.users.rows import read_identity
from mta.storage import BlobNotFoundError
from mta.storage.cache import ENTRY_MANIFEST


def materialize_fused(
    ctx: RegistryContext, identity: AdapterIdentity, *, reuse_anchors: bool = False
) -> Any:
    """Rebuild the fused adapter an identity names from its anchor blobs (in memory only).

    `reuse_anchors` takes the anchors from the context's parsed copies (bulk training);
    exports read them from the store each time, so every export re-verifies its inputs.
    """
    from mta.fusion import fuse

    digests = [digest for digest, _ in identity.anchors]
    if reuse_anchors:
        adapters = [ctx.anchor_adapter(digest) for digest in digests]
    else:
        adapters = [ctx.load_adapter(digest) for digest in digests]
    weights = [weight for _, weight in identity.anchors]
    return fuse(adapters, weights, method=identity.method, rank=identity.params.get("rank"))


def cache_key(identity: AdapterIdentity, **options: Any) -> str:
    """Export-cache key: a per-user prefix (so `delete_user` finds the entries) + the digest.

    The digest is the adapter identity's with the export options (`max_rank`, `dtype`,
    `base_model_name`): the same key means the same bytes, whatever database the ids come from.
    """
    return user_cache_prefix(identity.user_id) + identity.digest(**options)[:32]


def adapter_identity(ctx: RegistryContext, user_id: str) -> AdapterIdentity:
    """What the user's exported adapter is made of now (see `mta.registry.identity`)."""
    with ctx.read_session() as session:
        return read_identity(session, user_id)


def export_user(
    ctx: RegistryContext,
    identity: AdapterIdentity,
    out_dir: Path | None,
    *,
    max_rank: int | None = None,
    dtype: str = "fp32",
    base_model_name: str | None = None,
    gguf: bool = False,
) -> Export:
    """Materialize the user's adapter (fused + current stack) as one PEFT LoRA folder.

    The caller reads the identity once (`adapter_identity`): the bytes are built from the
    blobs it names, so they always match it (and its ETag), however the user changes
    meanwhile. The folder is cached under the identity (see `cache_key`) and copied to
    `out_dir` when given. The result also names the base model the adapter was trained on
    and the digest of its weights on this machine (`registry.base_weights`, cached).

    Args:
        identity: what to export (the user's current recipe and stack, as read).
        out_dir: destination folder (created; files overwritten), or None for the cache path.
        max_rank: compress to this rank with the truncated SVD (engines that cap LoRA rank).
        dtype: tensor precision of the written folder ("fp32" default, "fp16", "bf16").
        base_model_name: written as `base_model_name_or_path` instead of the bank's base
            model (serving engines match it against the model they serve).
        gguf: also write the same deltas as a llama.cpp LoRA GGUF (`adapter_model.gguf`,
            `mta.gguf_lora`) into the folder; fp32 or fp16 only.

    Raises:
        NotFoundError: the user was deleted meanwhile.
        InvalidInputError: a bad rank cap, or a GGUF in a dtype llama.cpp does not take.
        MtaError: with ``gguf``, the base model's head size cannot be read (a hub id
            without a local copy).
    """
    tensor_dtype = torch_dtype(dtype)
    if max_rank is not None and max_rank < 1:
        raise InvalidInputError(f"max_rank must be at least 1, got {max_rank}")
    check_gguf_dtype(gguf, dtype)
    user_id = identity.user_id
    options = {
        "max_rank": max_rank,
        "dtype": dtype,
        "base_model_name": base_model_name,
        "gguf": gguf,
    }
    key = cache_key(identity, **options)
    cache = ctx.adapter_cache
    cached = cache.get(key)
    from_cache = cached is not None
    try:
        if cached is None:
            cached, rank = _materialize_into_cache(ctx, identity, key, tensor_dtype, **options)
        else:
            _verify_sources(ctx, identity)
            rank = _exported_rank(cached)
    except (BlobNotFoundError, FileNotFoundError):  # blobs or staging swept by a deletion
        _refuse_if_forgotten(ctx, user_id)  # deleted meanwhile: not found, not a 500
        raise
    _refuse_if_forgotten(ctx, user_id)  # a deletion that raced us must not find our entry left
    path = cached
    if out_dir is not None:
        path = Path(out_dir)
        shutil.copytree(
            cached, path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(ENTRY_MANIFEST)
        )
    size = sum(
        p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.name != ENTRY_MANIFEST
    )
    base = base_weights(identity.base_model, ctx.cache_dir)
    return Export(
        user_id=user_id,
        path=Path(path),
        cache_path=Path(cached),
        from_cache=from_cache,
        rank=rank,
        max_rank=max_rank,
        recipe_id=identity.recipe_id,
        stack_id=identity.stack_id,
        bytes=size,
        base_model=identity.base_model,
        base_weights=base.weights,
        base_sha256=base.sha256,
    )


def _materialize_into_cache(
    ctx: RegistryContext,
    identity: AdapterIdentity,
    key: str,
    tensor_dtype: Any,
    *,
    max_rank: int | None,
    dtype: str,
    base_model_name: str | None,
    gguf: bool,
) -> tuple[Path, int]:
    """Fuse, stack and write the identity's PEFT folder (and GGUF) into the export cache."""
    from mta.export import export_adapter
    from mta.peft_io import save_peft_adapter

    del dtype  # part of the key; the tensors use tensor_dtype
    fused = materialize_fused(ctx, identity)
    stack = ctx.load_adapter(identity.stack) if identity.stack else None
    adapter = export_adapter(fused, stack, max_rank=max_rank)
    # Staged inside the cache under the key, so deleting the user finds a crashed build too.
    with ctx.adapter_cache.staging(key) as tmp:
        folder = save_peft_adapter(
            adapter,
            Path(tmp) / "adapter",
            dtype=tensor_dtype,
            base_model=base_model_name or identity.base_model,
        )
        if gguf:
            _write_gguf(folder, identity.base_model, tensor_dtype)
        # The sources let an erased anchor (`delete --drop-anchor`) find what was fused from it.
        cached = ctx.adapter_cache.put(key, folder, sources=_source_digests(identity))
    return cached, max(adapter.ranks().values())


def _source_digests(identity: AdapterIdentity) -> list[str]:
    """The blobs an export is built from: the anchor adapters and the stack."""
    return [d for d, _ in identity.anchors] + ([identity.stack] if identity.stack else [])


def _verify_sources(ctx: RegistryContext, identity: AdapterIdentity) -> None:
    """Re-hash the blobs a cached export was built from: a warm cache must not hide damage."""
    for digest in _source_digests(identity):
        ctx.store.verify(digest)


def _refuse_if_forgotten(ctx: RegistryContext, user_id: str) -> None:
    """NotFoundError (after dropping their cache entries) if the user is gone or being deleted."""
    if user_is_gone(ctx, user_id):
        ctx.adapter_cache.discard_prefix(user_cache_prefix(user_id))
        raise NotFoundError(f"no user {user_id!r}")


def _exported_rank(folder: Path) -> int:
    """The largest per-module rank written in a PEFT folder's config."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    ranks = [
        int(config.get("r", 0)),
        *(int(r) for r in (config.get("rank_pattern") or {}).values()),
    ]
    return max(ranks)


def check_gguf_dtype(gguf: bool, dtype: str) -> None:
    """InvalidInputError for a GGUF asked in a dtype llama.cpp adapters do not take (bf16)."""
    if gguf and dtype not in ("fp32", "fp16"):
        raise InvalidInputError(f"a GGUF adapter is fp32 or fp16, not {dtype}")


def _write_gguf(folder: Path, base_model: str, tensor_dtype: Any) -> Path:
    """The PEFT folder's deltas as llama.cpp's LoRA GGUF beside them (`gguf_lora.GGUF_NAME`).

    Read back from the written folder, so the GGUF holds exactly the tensors PEFT loads.
    """
    from mta.base_model import resolve_base_model
    from mta.gguf_lora import GGUF_NAME, base_head_dim, save_gguf_lora
    from mta.peft_io import load_peft_adapter

    head_dim = base_head_dim(resolve_base_model(base_model))
    adapter = load_peft_adapter(folder)
    return save_gguf_lora(adapter, Path(folder) / GGUF_NAME, head_dim=head_dim, dtype=tensor_dtype)
