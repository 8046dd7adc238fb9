"""Several users' stacks trained in one forward/backward pass, each exactly as if alone.

Each row of a joint batch belongs to one user; the hooks add that user's frozen fused
adapter and trainable stack to that user's rows only (the way multi-LoRA servers batch
adapters), so a user's loss depends on their own factors only. The joint loss is the sum
of every user's token-mean loss, so each user's gradient is the one training them alone
gives; each user keeps their own AdamW state, seed, shot order and step count (a user
with fewer steps simply drops out of later passes).

On a GPU one user's pass is mostly kernel launches and Python hooks; B users share them.
On these CPUs the matrix multiplies of one user already fill the cores, so the default
there stays one user per pass (measured slower when batched).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mta.errors import MtaError
from mta.examples import encode_example
from mta.inference import device_of, padding_id
from mta.training import (
    IGNORE_INDEX,
    Example,
    TrainConfig,
    frozen_base,
    init_factors,
    planned_steps,
    step_groups,
    target_logits,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from mta.lora import LoraAdapter

Tokens = tuple[list[int], list[int]]


@dataclass(frozen=True)
class StackJob:
    """One user's training: their examples, their frozen fused adapter, their config."""

    examples: Sequence[Example]
    config: TrainConfig
    frozen: LoraAdapter | None = None


@dataclass
class _User:
    """A user's state during batched training."""

    steps: list[list[list[Tokens]]]  # optimizer step -> micro-batches -> examples
    factors: dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]
    frozen: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    scale: float
    optimizer: torch.optim.Optimizer
    losses: list[float]


def train_stacks(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    jobs: Sequence[StackJob],
    *,
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[tuple[LoraAdapter, list[float]]]:
    """Train one stack per job in joint passes; returns (stack, losses) per job, in order.

    Every job must target the same modules; seeds, epochs, shots and learning rates may
    differ. The model is left unchanged, with no hooks.

    Args:
        on_step: called as ``on_step(job_index, step, loss)`` after each of a job's steps.

    Raises:
        MtaError: no jobs, a job without examples, a bad config or differing modules.
    """

    if not jobs:
        raise MtaError("no users to train")
    modules = list(jobs[0].config.target_modules)
    if any(list(job.config.target_modules) != modules for job in jobs):
        raise MtaError("users trained in one pass must target the same modules")
    users = [_prepare(model, tokenizer, job) for job in jobs]
    pad_id = padding_id(tokenizer)
    with frozen_base(model), _row_hooks(model, modules, users) as rows:
        for step in range(max(len(u.steps) for u in users)):
            active = [i for i, u in enumerate(users) if step < len(u.steps)]
            _joint_step(model, users, active, step, pad_id, rows)
            for i in active:
                if on_step is not None:
                    on_step(i, step + 1, users[i].losses[-1])
    return [_result(model, u) for u in users]


def _prepare(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, job: StackJob) -> _User:
    """A user's encoded steps, fresh factors and optimizer, seeded as `train_lora` seeds them."""
    import torch

    from mta.base_model import linear_shapes

    config = job.config
    config.validate()
    if not job.examples:
        raise MtaError("no training examples")
    encoded = [encode_example(tokenizer, p, t, config.max_length) for p, t in job.examples]
    shapes = linear_shapes(model, config.target_modules)
    factors = init_factors(model, shapes, config.rank, torch.Generator().manual_seed(config.seed))
    order_gen = torch.Generator().manual_seed(config.seed + 1)
    total = planned_steps(len(encoded), config)
    steps: list[list[list[Tokens]]] = []
    for _ in range(config.epochs):
        order = torch.randperm(len(encoded), generator=order_gen).tolist()
        for ids in step_groups(order, config.batch_size, config.grad_accum):
            if len(steps) < total:
                steps.append([[encoded[i] for i in micro] for micro in ids])
    params = [p for pair in factors.values() for p in pair]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    device = device_of(model)
    frozen = {
        path: (m.A.to(device, torch.float32), m.B.to(device, torch.float32), m.scale)
        for path, m in (job.frozen.modules.items() if job.frozen is not None else ())
    }
    return _User(steps, factors, frozen, config.scale, optimizer, [])


def _joint_step(
    model: torch.nn.Module,
    users: list[_User],
    active: list[int],
    step: int,
    pad_id: int,
    rows: list[tuple[int, int, int]],
) -> None:
    """One optimizer step of every active user: their micro-batches in joint passes."""
    n_tokens = {i: sum(len(t) for micro in users[i].steps[step] for _, t in micro) for i in active}
    totals = dict.fromkeys(active, 0.0)
    for user in (users[i] for i in active):
        user.optimizer.zero_grad(set_to_none=True)
    for micro in range(max(len(users[i].steps[step]) for i in active)):
        batch, owners = [], []
        for i in active:
            part = users[i].steps[step][micro] if micro < len(users[i].steps[step]) else []
            batch.extend(part)
            owners.extend([i] * len(part))
        rows[:] = _blocks(owners)
        sums = _row_loss_sums(model, batch, pad_id)
        loss = sum(sums[j] / n_tokens[owners[j]] for j in range(len(batch)))
        loss.backward()
        for j, owner in enumerate(owners):
            totals[owner] += float(sums[j].detach())
    for i in active:
        users[i].optimizer.step()
        users[i].optimizer.zero_grad(set_to_none=True)
        users[i].losses.append(totals[i] / n_tokens[i])


def _blocks(owners: list[int]) -> list[tuple[int, int, int]]:
    """(user, first row, end row) of each user's contiguous rows in a joint batch."""
    blocks: list[tuple[int, int, int]] = []
    for row, owner in enumerate(owners):
        if blocks and blocks[-1][0] == owner:
            blocks[-1] = (owner, blocks[-1][1], row + 1)
        else:
            blocks.append((owner, row, row + 1))
    return blocks


def _row_loss_sums(model: torch.nn.Module, batch: list[Tokens], pad_id: int) -> list:
    """Summed target-token cross-entropy of each row of one left-padded joint batch."""
    import torch

    logits, labels = target_logits(model, batch, pad_id)
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(len(batch), -1)
    return list(per_token.sum(dim=1).unbind())


@contextmanager
def _row_hooks(
    model: torch.nn.Module, modules: list[str], users: list[_User]
) -> Iterator[list[tuple[int, int, int]]]:
    """Hooks adding each user's frozen and trainable branches to that user's rows only.

    Yields the (user, start, end) row blocks of the current batch, which the caller
    fills before each forward pass.
    """
    from mta.base_model import linear_shapes

    rows: list[tuple[int, int, int]] = []
    paths = list(linear_shapes(model, modules))
    handles = []
    try:
        for path in paths:
            hook = _row_hook(path, users, rows)
            handles.append(model.get_submodule(path).register_forward_hook(hook))
        yield rows
    finally:
        for handle in handles:
            handle.remove()


def _row_hook(path: str, users: list[_User], rows: list[tuple[int, int, int]]) -> Callable:
    """The forward hook of one Linear: per-user blocks of fp32 LoRA branches."""
    import torch

    def hook(_module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0].float()
        pieces = []
        for owner, start, end in rows:
            user, xs = users[owner], x[start:end]
            delta = torch.zeros(output[start:end].shape, dtype=torch.float32, device=x.device)
            if path in user.frozen:
                a, b, scale = user.frozen[path]
                delta = delta + (xs @ a.T) @ b.T * scale
            a, b = user.factors[path]
            pieces.append(delta + (xs @ a.T) @ b.T * user.scale)
        return output + torch.cat(pieces).to(output.dtype)

    return hook


def _result(model: torch.nn.Module, user: _User) -> tuple[LoraAdapter, list[float]]:
    """A user's trained stack (CPU copies), as `train_lora` returns it."""
    from mta.lora import LoraAdapter, LoraModule

    modules = {
        path: LoraModule(
            A=a.detach().to("cpu", copy=True), B=b.detach().to("cpu", copy=True), scale=user.scale
        )
        for path, (a, b) in user.factors.items()
    }
    base_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    return LoraAdapter(modules=modules, base_model=base_name), user.losses
