"""The one definition of what fixes a user's exported adapter bytes.

The export cache key, the HTTP ETag, `mta publish` and the evaluation all derive from
`AdapterIdentity`: equal digests mean byte-equal PEFT folders, and any change to the
stack, the recipe's anchors or weights, the fusion method or the export options changes it.

`engine_name` is the one source of the names serving engines load adapters under
(`<user id>~<12 hex>`, a published folder's name and the server's adapter name): the hex
comes from the digest, so new bytes always get a new name and a name never goes stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mta.registry.entities import Recipe
from mta.registry.errors import NotFoundError
from mta.registry.names import USER_ID_PATTERN

# Bump when the export's byte layout changes, so every cache entry and ETag turns over.
IDENTITY_FORMAT = 2  # 2: every exported module at one rank (zero-padded)


@dataclass(frozen=True)
class AdapterIdentity:
    """What a user's exported adapter is made of; the fused adapter is rebuilt from it."""

    user_id: str
    anchors: tuple[tuple[str, float], ...]  # (anchor adapter blob digest, weight), recipe order
    method: str
    params: dict[str, Any] = field(hash=False)
    stack: str | None  # the current stack's blob digest; None serves the fused adapter alone
    base_model: str
    recipe_id: int = field(compare=False)
    stack_id: int | None = field(compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The byte-determining facts as plain JSON values (ids of rows excluded)."""
        return {
            "user_id": self.user_id,
            "anchors": [[digest, weight] for digest, weight in self.anchors],
            "method": self.method,
            "params": self.params,
            "stack": self.stack,
            "base_model": self.base_model,
        }

    def digest(
        self,
        *,
        max_rank: int | None = None,
        dtype: str = "fp32",
        base_model_name: str | None = None,
        gguf: bool = False,
    ) -> str:
        """sha256 hex of the identity and the export options (rank cap, dtype, config name).

        ``gguf`` (a llama.cpp GGUF beside the PEFT files) enters the payload only when set,
        so the digests of PEFT-only exports stay what they were.
        """
        payload: dict[str, Any] = {
            "format": IDENTITY_FORMAT,
            "adapter": self.to_dict(),
            "max_rank": max_rank,
            "dtype": dtype,
            "base_model_name": base_model_name,
        }
        if gguf:
            payload["gguf"] = True
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


# `<user id>~<version>`. "~" is outside the user-id alphabet (`names.USER_ID_PATTERN`), so a
# name splits one way only and no name is a prefix of another: LoRAX lists an adapter's S3
# keys by its bare name as a prefix (no trailing "/"), which with "@" (an id character)
# would let "bob@<v>" list the keys of user "bob@<v>x". 12 hex = 48 bits: two versions of one
# user colliding is a one in 2**48 event per pair.
ENGINE_NAME_SEPARATOR = "~"
ENGINE_VERSION_CHARS = 12


def engine_name(
    identity: AdapterIdentity,
    *,
    max_rank: int | None = None,
    dtype: str = "fp32",
    base_model_name: str | None = None,
    gguf: bool = False,
) -> str:
    """``<user id>~<12 hex>``: the name an engine loads these exact adapter bytes under.

    The hex is the start of `AdapterIdentity.digest` with the same export options, so any
    change to the adapter or to the options that changes the bytes changes the name.
    """
    digest = identity.digest(
        max_rank=max_rank, dtype=dtype, base_model_name=base_model_name, gguf=gguf
    )
    return f"{identity.user_id}{ENGINE_NAME_SEPARATOR}{digest[:ENGINE_VERSION_CHARS]}"


def parse_engine_name(name: str) -> tuple[str, str] | None:
    """(user id, version) of an `engine_name`, or None when `name` is not one."""
    user_id, separator, version = name.rpartition(ENGINE_NAME_SEPARATOR)
    if (
        not separator
        or len(version) != ENGINE_VERSION_CHARS
        or any(c not in "0123456789abcdef" for c in version)
        or not USER_ID_PATTERN.fullmatch(user_id)
        or user_id in (".", "..")
    ):
        return None
    return user_id, version


def identity_of(
    recipe: Recipe | None,
    stack: tuple[str, int] | None,
    anchor_digests: Mapping[str, str],
    base_model: str,
) -> AdapterIdentity:
    """Build the identity from a user's current recipe and stack.

    Args:
        recipe: the user's current recipe; None means there is nothing to export.
        stack: (blob digest, stack id) of the current stack (trained on `recipe`), or None.
        anchor_digests: anchor id -> adapter blob digest of the recipe's bank version.
        base_model: the bank's base model, written into the exported config.

    Raises:
        NotFoundError: no recipe yet, or the recipe names an anchor the bank lacks.
    """
    if recipe is None:
        raise NotFoundError("the user has no recipe yet; run `mta user fuse`")
    missing = [a.anchor_id for a in recipe.anchors if a.anchor_id not in anchor_digests]
    if missing:
        raise NotFoundError(f"recipe {recipe.recipe_id} names unknown anchors {', '.join(missing)}")
    return AdapterIdentity(
        user_id=recipe.user_id,
        anchors=tuple((anchor_digests[a.anchor_id], float(a.weight)) for a in recipe.anchors),
        method=recipe.method,
        params=dict(recipe.params),
        stack=stack[0] if stack is not None else None,
        base_model=base_model,
        recipe_id=recipe.recipe_id,
        stack_id=stack[1] if stack is not None else None,
    )
