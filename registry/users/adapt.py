"""Adapt: train a user's ultra-low-rank stack on their shots, on top of the frozen fused adapter.

Reads what it needs in one session (fusing first when the user has no recipe), trains with
no transaction open, then stores the stack's blob and its row (`_commit_stack`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mta.progress import ProgressFn
from mta.registry.blobrefs import KIND_STACK, put_blob, reassert_blobs, record_blob
from mta.registry.context import MODEL_LOCK, RegistryContext
from mta.registry.entities import Stack
from mta.registry.errors import InvalidInputError, NotFoundError
from mta.registry.identity import AdapterIdentity
from mta.registry.models import SqlBank, SqlRecipe, SqlStack, utcnow
from mta.registry.requests import AdaptRequest, FuseRequest
from mta.registry.users.export import materialize_fused
from mta.registry.users.records import fuse_user, load_profile
from mta.registry.users.rows import get_user_row, identity_of_recipe, latest_row, stack_entity


@dataclass(frozen=True)
class _AdaptInputs:
    """What training a user's stack needs, read in one session."""

    identity: AdapterIdentity  # the recipe the stack is trained on (and its anchors)
    bank_id: int
    base_model: str
    modules: list[str]
    task: str
    profile_blob: str


def _adapt_inputs(ctx: RegistryContext, user_id: str) -> _AdaptInputs | None:
    """The user's identity and bank facts; None when the user has no recipe yet."""
    with ctx.read_session() as session:
        user = get_user_row(session, user_id)
        recipe = latest_row(session, SqlRecipe, user_id)
        if recipe is None:
            return None
        bank = session.get_one(SqlBank, recipe.bank_id)
        return _AdaptInputs(
            identity=identity_of_recipe(session, recipe),
            bank_id=bank.id,
            base_model=bank.base_model,
            modules=list(bank.target_modules),
            task=user.task,
            profile_blob=user.profile_blob,
        )


@dataclass(frozen=True)
class PreparedAdapt:
    """A user's training, read and set up: what `train_lora` needs and what the commit records."""

    user_id: str
    request: AdaptRequest
    inputs: _AdaptInputs
    chosen: list[int]
    examples: list[tuple[str, str]]
    config: Any  # mta.training.TrainConfig
    fused: Any  # the frozen fused adapter (LoraAdapter), in memory only


def prepare_adapt(ctx: RegistryContext, user_id: str, request: AdaptRequest) -> PreparedAdapt:
    """Read the user (fusing first when they have no recipe), pick the shots, build the fused
    adapter: everything before training."""
    from mta.tasks import get_task, profile_examples

    request.validate()
    inputs = _adapt_inputs(ctx, user_id)
    if inputs is None:
        fuse_user(ctx, user_id, FuseRequest(), if_absent=True)
        inputs = _adapt_inputs(ctx, user_id)
    if inputs is None:  # the recipe went with a deletion that ran meanwhile
        raise NotFoundError(f"user {user_id!r} has no recipe; run `mta user fuse`")
    items = load_profile(ctx, inputs.profile_blob)["profile"]
    chosen = request.choose_shots(len(items))
    examples = profile_examples(get_task(inputs.task), [items[i] for i in chosen])
    config = request.train_config(inputs.modules)
    fused = materialize_fused(ctx, inputs.identity, reuse_anchors=True)
    return PreparedAdapt(user_id, request, inputs, chosen, examples, config, fused)


def commit_adapt(ctx: RegistryContext, prepared: PreparedAdapt, stack: Any, losses: list) -> Stack:
    """Store a trained stack: its blob, then its row (the user's new current stack)."""
    record = prepared.request.record(
        prepared.config, prepared.chosen, len(prepared.examples), losses
    )
    return _commit_stack(
        ctx, prepared.user_id, prepared.inputs, stack, prepared.request.dtype, record
    )


def adapt_user(
    ctx: RegistryContext,
    user_id: str,
    request: AdaptRequest,
    *,
    progress: ProgressFn | None = None,
    timings: dict[str, float] | None = None,
) -> Stack:
    """Train the user's stack as `request` says, on top of their frozen fused adapter.

    Fuses first (defaults) when the user has no recipe. The shots are
    `request.choose_shots(n)`; training examples are `profile_examples` over the shots
    (leave-one-out: each shot a target, the other shots its history).

    Args:
        user_id: a registered user.
        request: shots, the stack's TrainConfig fields and its stored dtype (validated here).
        progress: called as ("train", step, total_steps).
        timings: filled with the seconds spent in "fuse" (recipe if missing, fused adapter),
            "train" and "commit" (blob and row), for bulk reports.

    Returns:
        The stored (now current) stack.
    """
    from mta.training import planned_steps, train_lora

    clock = _PhaseClock(timings)
    prepared = prepare_adapt(ctx, user_id, request)
    clock.lap("fuse")
    model, tokenizer = ctx.base_model(prepared.inputs.base_model)
    total = planned_steps(len(prepared.examples), prepared.config)

    def on_step(step: int, _loss: float) -> None:
        if progress is not None:
            progress("train", step, total)

    with MODEL_LOCK:
        stack, losses = train_lora(
            model,
            tokenizer,
            prepared.examples,
            prepared.config,
            frozen=prepared.fused,
            progress=False,
            on_step=on_step,
        )
    clock.lap("train")
    entity = commit_adapt(ctx, prepared, stack, losses)
    clock.lap("commit")
    return entity


def train_together(ctx: RegistryContext, prepared: list[PreparedAdapt]) -> list[tuple[Any, list]]:
    """Train several prepared users' stacks in joint passes (`mta.batched_training`).

    Each stack equals what `adapt_user` trains for that user alone. Users of one call
    share a base model and target modules (a bulk job's users of one bank do).

    Raises:
        InvalidInputError: users on different base models.
    """
    from mta.batched_training import StackJob, train_stacks

    bases = {p.inputs.base_model for p in prepared}
    if len(bases) != 1:
        raise InvalidInputError("users trained in one pass must share a base model")
    model, tokenizer = ctx.base_model(bases.pop())
    jobs = [StackJob(p.examples, p.config, p.fused) for p in prepared]
    with MODEL_LOCK:
        return train_stacks(model, tokenizer, jobs)


def _commit_stack(
    ctx: RegistryContext,
    user_id: str,
    inputs: _AdaptInputs,
    stack: Any,
    dtype: str,
    train_config: dict[str, Any],
) -> Stack:
    """Store the stack's blob, then its row (the user's new current stack)."""
    from mta.adapter_blob import adapter_to_bytes

    data = adapter_to_bytes(stack, dtype=dtype)
    blob = put_blob(ctx, data, KIND_STACK)
    with ctx.session() as session:
        record_blob(session, blob)
        entity = add_stack_row(
            session, user_id, inputs.identity.recipe_id, inputs.bank_id, blob.digest, len(data),
            dtype, train_config,
        )  # fmt: skip
    reassert_blobs(ctx, [blob])
    return entity


def add_stack_row(
    session: Any,
    user_id: str,
    recipe_id: int,
    bank_id: int,
    digest: str,
    size: int,
    dtype: str,
    train_config: dict[str, Any],
) -> Stack:
    """Insert a stack row for an already recorded blob (the user's new current stack)."""
    losses = train_config.get("losses") or []
    row = SqlStack(
        user_id=user_id,
        recipe_id=recipe_id,
        bank_id=bank_id,
        blob=digest,
        rank=train_config["rank"],
        dtype=dtype,
        bytes=size,
        train_config=train_config,
        final_loss=float(losses[-1]) if losses else None,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return stack_entity(session, row)


class _PhaseClock:
    """Adds the seconds since the previous lap to a phase of an optional timings dict."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the last lap to `phase`."""
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[phase] = self.timings.get(phase, 0.0) + now - self.last
        self.last = now
