"""Several users in one pass train exactly the stacks each would train alone."""

from __future__ import annotations

import pytest
import torch

from mta.batched_training import StackJob, train_stacks
from mta.errors import MtaError
from mta.training import TrainConfig, train_lora
from tests.fixtures_model import random_adapter

TAGS = ("comedy", "horror", "crime", "romance", "sci-fi", "drama")


def _examples(user: int, n: int) -> list[tuple[str, str]]:
    """`n` examples of distinct prompt lengths for user `user`."""
    return [
        (
            f"User {user} story {i}: " + "a long plot " * (i + user) + "Tag:",
            " " + TAGS[(i + user) % 6],
        )
        for i in range(n)
    ]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-12))


def test_batched_stacks_equal_sequential_ones(tiny_model, tiny_shapes) -> None:
    model, tokenizer = tiny_model
    # Different shot counts (so step counts), sequence lengths, seeds, rates; a fused
    # adapter under some users, none under another.
    jobs = [
        StackJob(_examples(0, 5), TrainConfig(rank=1, epochs=3, lr=1e-3, seed=0),
                 random_adapter(tiny_shapes, rank=4, seed=1)),
        StackJob(_examples(1, 3), TrainConfig(rank=1, epochs=3, lr=2e-3, seed=7),
                 random_adapter(tiny_shapes, rank=4, seed=2)),
        StackJob(_examples(2, 6), TrainConfig(rank=1, epochs=2, lr=1e-3, seed=3, batch_size=2)),
    ]  # fmt: skip
    seen: list[tuple[int, int]] = []
    batched = train_stacks(model, tokenizer, jobs, on_step=lambda i, s, _l: seen.append((i, s)))
    for index, (job, (stack, losses)) in enumerate(zip(jobs, batched, strict=True)):
        alone, alone_losses = train_lora(
            model, tokenizer, job.examples, job.config, frozen=job.frozen, progress=False
        )
        assert len(losses) == len(alone_losses) == sum(1 for i, _ in seen if i == index)
        assert max(abs(x - y) for x, y in zip(losses, alone_losses, strict=True)) < 1e-5
        for path, module in alone.modules.items():
            assert _relative(stack.modules[path].A, module.A) < 1e-5, path
            assert _relative(stack.modules[path].B, module.B) < 1e-5, path
            assert stack.modules[path].scale == module.scale
    assert not any(m._forward_hooks for m in model.modules())


def test_users_of_one_pass_must_share_target_modules(tiny_model) -> None:
    model, tokenizer = tiny_model
    jobs = [
        StackJob(_examples(0, 2), TrainConfig(rank=1)),
        StackJob(_examples(1, 2), TrainConfig(rank=1, target_modules=["q_proj"])),
    ]
    with pytest.raises(MtaError, match="same modules"):
        train_stacks(model, tokenizer, jobs)
    with pytest.raises(MtaError, match="no users"):
        train_stacks(model, tokenizer, [])
