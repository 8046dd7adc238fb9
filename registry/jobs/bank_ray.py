"""`mta bank build --executor ray`: each anchor's meta-LoRA is trained as a Ray task.

A task gets the anchor's examples and the training config and returns the adapter's fp16
blob (~5 MB for a rank-8 SmolLM2 anchor; a bank has tens of anchors, so the object store
carries little). The driver then stores every blob and publishes the version in one
transaction (`banks.versions.publish_bank`), exactly as a local build: a reader sees the
whole version or none, and a build that dies midway leaves at most orphan blobs for `gc`.

Tasks touch neither the database nor the store, so Ray's own task retry fits here: a task
whose worker or node dies is re-run elsewhere (`max_retries`), and a re-run trains the same
seeded anchor. That is also why any registry may be used with a remote cluster here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mta.progress import ProgressFn
from mta.registry.banks.anchor_training import train_anchor_bytes
from mta.registry.banks.versions import report_progress
from mta.registry.context import RegistryContext
from mta.registry.errors import InvalidInputError
from mta.registry.jobs.ray_cluster import ray_session, reserve_worker_cpus, worker_env

if TYPE_CHECKING:
    from mta.training import TrainConfig

log = logging.getLogger(__name__)

ANCHOR_RETRIES = 3  # Ray re-runs a task whose worker died this many times


def train_anchor_task(
    model_name: str,
    examples: Sequence[tuple[str, str]],
    config: TrainConfig,
    shapes: dict[str, tuple[int, int]],
    device: str | None = None,
) -> bytes:
    """One anchor on a Ray worker: the base model loads once per worker process (cached)."""
    import ray

    from mta.base_model import load_base_model

    reserve_worker_cpus(ray)
    # The device is resolved on the worker: "auto" means the GPU Ray gave this task, if any.
    model, tokenizer = load_base_model(model_name, device=device)
    return train_anchor_bytes(model, tokenizer, examples, config, shapes)


def train_anchors_ray(
    ctx: RegistryContext,
    model_name: str,
    examples_of: Sequence[Sequence[tuple[str, str]]],
    config: TrainConfig,
    shapes: dict[str, tuple[int, int]],
    *,
    address: str | None = None,
    workers: int = 2,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    device: str | None = None,
    progress: ProgressFn | None = None,
) -> list[bytes]:
    """Train every anchor as a Ray task, at most `workers` at once; blobs in anchor order.

    Args:
        model_name: the base model as the bank records it (each worker resolves it).
        examples_of: each anchor's (prompt, target) examples.
        address: as for `ray_runner.run_ray` (None/"local": a private Ray here).
        num_gpus: GPUs each task reserves (`--gpus-per-worker`).
        device: where each task trains (`--device`; None: MTA_DEVICE, else auto).
        progress: called as ("train", done, total) as anchors finish.

    Raises:
        InvalidInputError: Ray is not installed.
        Exception: an anchor's own error (e.g. NaN weights), after Ray's retries.
    """
    if workers < 1:
        raise InvalidInputError(f"--workers must be >= 1 (got {workers})")
    total = len(examples_of)
    results: list[bytes | None] = [None] * total
    with ray_session(
        ctx, address, num_cpus=max(1, int(workers * max(num_cpus, 1))), check_registry=False
    ) as ray:
        options: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "max_retries": ANCHOR_RETRIES,
            "retry_exceptions": False,  # an error in training is the anchor's, not the node's
        }
        env = worker_env()
        if env:
            options["runtime_env"] = {"env_vars": env}
        task = ray.remote(train_anchor_task).options(**options)
        waiting = list(enumerate(examples_of))
        running: dict[Any, int] = {}
        done = 0
        while waiting or running:
            while waiting and len(running) < workers:
                index, examples = waiting.pop(0)
                running[task.remote(model_name, list(examples), config, shapes, device)] = index
            finished, _ = ray.wait(list(running), num_returns=1)
            for ref in finished:
                index = running.pop(ref)
                try:
                    results[index] = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    cause = getattr(error, "cause", None)  # our own error, one line
                    raise (cause if isinstance(cause, Exception) else error) from None
                done += 1
                report_progress(progress, "train", done, total)
    return [blob for blob in results if blob is not None]
