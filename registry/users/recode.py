"""Recode: store a user's current stack in another format without training it again.

Quantized formats encode the fp16-rounded factors (`mta.packed_stack`), so an fp16 or fp32
stack re-stored as int8 or nf4 is byte for byte the blob `mta user adapt --dtype FORMAT`
would have stored for the same training. That makes a smaller default format something a
registry can adopt for the users it already has: milliseconds per user, no model, no GPU.
Recodes that would not equal training into the target (quantizing twice, widening a
rounded stack) are refused: those users need `mta user adapt --dtype FORMAT`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mta.registry.blobrefs import KIND_STACK, put_blob, reassert_blobs, record_blob
from mta.registry.context import RegistryContext
from mta.registry.entities import Stack
from mta.registry.errors import ConflictError, InvalidInputError, NotFoundError
from mta.registry.models import SqlRecipe, SqlStack
from mta.registry.users.adapt import add_stack_row
from mta.registry.users.rows import current_stack, get_user_row, latest_row, stack_entity

# Source format -> the formats it recodes into exactly (as if trained into them).
EXACT_RECODES = {
    "fp32": ("fp16", "bf16", "int8", "nf4"),
    "fp16": ("int8", "nf4"),
}


@dataclass(frozen=True)
class Recoded:
    """One user's recode: the stack now current, and the stack it was recoded from."""

    stack: Stack
    previous_stack_id: int | None  # None: already stored in the format, nothing written
    previous_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {
            "user_id": self.stack.user_id,
            "stack_id": self.stack.stack_id,
            "dtype": self.stack.dtype,
            "bytes": self.stack.bytes,
            "previous_stack_id": self.previous_stack_id,
            "previous_bytes": self.previous_bytes,
        }


def check_recode(source: str, target: str) -> None:
    """InvalidInputError unless re-storing a `source` stack as `target` equals training into it."""
    if target not in EXACT_RECODES.get(source, ()):
        raise InvalidInputError(
            f"a {source} stack cannot be recoded to {target} exactly (it would not equal a stack "
            f"trained into {target}); re-train it with `mta user adapt --dtype {target}`"
        )


def recode_stack(ctx: RegistryContext, user_id: str, dtype: str) -> Recoded:
    """Store the user's current stack as `dtype`: its blob, then a new current stack row.

    The new row keeps the stack's recipe, bank, rank and `train_config` (plus
    `recoded_from`), so a bulk job asking for `dtype` sees it as already trained.

    Raises:
        NotFoundError: no such user, or no current stack.
        InvalidInputError: an unknown format, or a recode that is not exact (`check_recode`).
        ConflictError: the user got another stack or recipe while this ran (nothing written).
    """
    from mta.adapter_blob import adapter_to_bytes
    from mta.stack_formats import check_format

    check_format(dtype)
    with ctx.read_session() as session:
        source = _current(session, user_id)
        if source.dtype == dtype:
            return Recoded(stack_entity(session, source), None, source.bytes)
        check_recode(source.dtype, dtype)
        read = (source.id, source.recipe_id, source.blob, source.bytes)
        bank_id, config = source.bank_id, dict(source.train_config or {})
    stack_id, recipe_id, digest, previous_bytes = read
    data = adapter_to_bytes(ctx.load_adapter(digest), dtype=dtype)
    blob = put_blob(ctx, data, KIND_STACK)
    with ctx.session() as session:
        if _current(session, user_id).id != stack_id:
            raise ConflictError(f"user {user_id!r} changed while recoding; run it again")
        record_blob(session, blob)
        config["recoded_from"] = stack_id
        entity = add_stack_row(
            session, user_id, recipe_id, bank_id, blob.digest, len(data), dtype, config
        )
    reassert_blobs(ctx, [blob])
    return Recoded(entity, stack_id, previous_bytes)


def _current(session: Any, user_id: str) -> SqlStack:
    """The user's current stack row, or NotFoundError."""
    get_user_row(session, user_id)
    recipe = latest_row(session, SqlRecipe, user_id)
    stack = current_stack(session, recipe) if recipe is not None else None
    if stack is None:
        raise NotFoundError(f"user {user_id!r} has no current stack; run `mta user adapt`")
    return stack
