"""Users trained per pass: one at a time (`train_lora`) vs B at once (`train_stacks`).

The prepared GPU check of the compute issue: `MTA_DEVICE=cuda python -m bench --only
batched` prints users/min for B = 1, 8, 32, 64 at the defaults (5 shots of real LaMP
movie-tagging users, 3 epochs, rank-1 stack, lr 1e-3, on a rank-16 fused adapter as two
top-2 rank-8 anchors make), with the per-user phase times; B = 1 is the baseline of the
same run. On the CPU (`--quick`: B = 1, 2 on two users) it shows why B stays 1 there.
"""

from __future__ import annotations

import time
from typing import Any

from bench.report import Section

TASK = "movie_tagging"
SHOTS, EPOCHS, RANK, LR = 5, 3, 1, 1e-3
FUSED_RANK = 16  # top-2 rank-8 anchors, fused exactly ("cat")


def _jobs(model: Any, tokenizer: Any, count: int) -> list[Any]:
    """`count` users' training jobs: real profiles' shots, random fused adapters."""
    from bench.shapes import random_adapter
    from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes
    from mta.batched_training import StackJob
    from mta.evaluation.data import resolve_data_path
    from mta.lamp_data import load_users
    from mta.registry.requests import shot_indices
    from mta.tasks import get_task, profile_examples
    from mta.training import TrainConfig

    task = get_task(TASK)
    entries = load_users(resolve_data_path(TASK, None), require_gold=False)
    shapes = linear_shapes(model, DEFAULT_TARGET_MODULES)
    jobs = []
    for n in range(count):
        profile = entries[n % len(entries)]["profile"]
        shots = [profile[i] for i in shot_indices(len(profile), SHOTS, n)]
        config = TrainConfig(rank=RANK, epochs=EPOCHS, lr=LR, seed=n)
        fused = random_adapter(shapes, FUSED_RANK, seed=n)
        jobs.append(StackJob(profile_examples(task, shots), config, fused))
    return jobs


def measure(model_spec: str | None, sizes: list[int], users_per_size: dict[int, int]) -> Section:
    """Users/min for each pass size B (B = 1 is `train_lora` user by user), in one run."""
    from mta.base_model import load_base_model
    from mta.batched_training import train_stacks
    from mta.devices import resolve_device
    from mta.training import train_lora

    device = resolve_device()
    model, tokenizer = load_base_model(model_spec)
    section = Section(
        f"Users per pass on {device} ({SHOTS} shots, {EPOCHS} epochs, rank-{RANK} stack on a "
        f"rank-{FUSED_RANK} fused adapter)",
        ["B (users per pass)", "users", "users/min", "s per user", "vs B=1", "prepare s/user"],
    )
    baseline = None
    for size in sizes:
        count = users_per_size.get(size, size)
        start = time.perf_counter()
        jobs = _jobs(model, tokenizer, count)
        prepared = time.perf_counter()
        if size == 1:
            for job in jobs:
                train_lora(model, tokenizer, job.examples, job.config, frozen=job.frozen,
                           progress=False)  # fmt: skip
        else:
            for first in range(0, count, size):
                train_stacks(model, tokenizer, jobs[first : first + size])
        _synchronize(device)
        train_s = time.perf_counter() - prepared
        rate = 60.0 * count / train_s
        baseline = baseline or rate
        section.rows.append(
            [
                str(size),
                str(count),
                f"{rate:.1f}",
                f"{train_s / count:.2f}",
                f"{rate / baseline:.2f}",
                f"{(prepared - start) / count:.3f}",
            ]
        )
    section.notes.append("users/min counts training only; 'prepare' is shots and fused adapters")
    return section


def _synchronize(device: str) -> None:
    """Wait for queued GPU work, so the clock stops when training has really finished."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench_batched(quick: bool) -> Section:
    """The `batched` section: B = 1, 8, 32, 64 (quick: 1, 2 with two users each)."""
    if quick:
        return measure(None, [1, 2], {1: 2, 2: 2})
    return measure(None, [1, 8, 32, 64], {1: 8})
