"""Building bank versions: select anchors and train meta-LoRAs (`build_bank`), or publish
externally trained PEFT LoRAs as anchors (`push_bank`). Both check every argument before
any work, then hand the anchors to `service_bank.publish_bank`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mta.dtypes import torch_dtype
from mta.registry.banks.versions import (
    ANCHOR_DATA_MODES,
    BANK_ADAPTER_DTYPE,
    AnchorPayload,
    ProgressFn,
    check_enough_candidates,
    check_model_specs,
    publish_bank,
    report_progress,
)
from mta.registry.context import MODEL_LOCK, RegistryContext
from mta.registry.entities import BankVersion
from mta.registry.errors import InvalidInputError

if TYPE_CHECKING:
    from mta.training import TrainConfig

EXECUTORS = ("local", "ray")


def build_bank(
    ctx: RegistryContext,
    *,
    task: str,
    data_path: Path,
    anchors: int,
    epochs: int = 1,
    rank: int = 8,
    anchor_data: str = "cluster",
    min_history: int = 8,
    lr: float = 2e-4,
    base_model: str | None = None,
    embedder: str | None = None,
    seed: int = 0,
    target_modules: Sequence[str] | None = None,
    max_steps: int | None = None,
    progress: ProgressFn | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int = 2,
) -> BankVersion:
    """Select anchors from a user file, train one meta-LoRA per anchor, publish a version.

    Args:
        task: LaMP task name.
        data_path: per-user JSON ([{user_id, profile, query}]); queries are not needed.
        anchors: number of anchors (k-means clusters).
        epochs, rank, lr, seed, max_steps: training of each meta-LoRA.
        anchor_data: "cluster" (default) trains on the pooled histories of the anchor's
            k-means cluster, with the cluster-mean embedding; "user" on the anchor's own
            history (the paper). Cluster anchors fuse better (docs/results.md).
        min_history: minimum profile length of an anchor.
        base_model, embedder: specs (default env MTA_BASE_MODEL / MTA_EMBEDDER, then built-ins).
        target_modules: linear layers to adapt (default all seven Llama projections).
        progress: called as (stage, done, total) for stages "embed", "train".
        executor: "local" trains the anchors one after another here; "ray" trains each as
            a Ray task (`bank_ray.train_anchors_ray`) on `address` with `workers` at once.
            Either way this process stores every blob, then publishes in one transaction.

    Returns:
        The new bank version.
    """
    from mta.anchors import select_anchors
    from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes
    from mta.lamp_data import load_users
    from mta.tasks import get_task
    from mta.training import TrainConfig

    _check_choices(executor, anchor_data)
    task_obj = get_task(task)
    modules = list(target_modules or DEFAULT_TARGET_MODULES)
    config = TrainConfig(
        rank=rank, epochs=epochs, lr=lr, seed=seed, target_modules=modules, max_steps=max_steps
    )
    config.validate()
    # Every argument is checked before the first user is embedded: a typo in --base-model
    # must not cost an embedding pass, nor a missing schema a training run.
    model_name = check_model_specs(base_model, embedder)
    with ctx.read_session():
        pass
    users = load_users(data_path, require_gold=False, task=task_obj)
    check_enough_candidates(users, anchors, min_history)
    emb = ctx.embedder(embedder)
    matrix = _embed_users(emb, users, task_obj, progress)
    lengths = [len(u["profile"]) for u in users]
    try:
        selection = select_anchors(matrix, lengths, anchors, min_history=min_history, seed=seed)
    except ValueError as error:
        raise InvalidInputError(str(error)) from error

    model, tokenizer = ctx.base_model(model_name)
    shapes = linear_shapes(model, modules)
    payloads, examples_of, trained_on = _plan_anchors(
        selection, users, matrix, lengths, task_obj, anchor_data
    )
    trained = _train_anchors(
        ctx,
        (model_name, model, tokenizer),
        examples_of,
        config,
        shapes,
        executor=executor,
        address=address,
        workers=workers,
        progress=progress,
    )
    for payload, adapter_bytes in zip(payloads, trained, strict=True):
        payload.adapter_bytes = adapter_bytes
    return publish_bank(
        ctx,
        task=task,
        base_model=model_name,
        embedder=emb.name,
        target_modules=modules,
        rank=rank,
        anchor_data=anchor_data,
        config={
            "source": "build",
            "anchor_members": trained_on,
            "data_path": str(Path(data_path)),
            "candidates": len(users),
            "min_history": min_history,
            "seed": seed,
            "train": {"epochs": epochs, "lr": lr, "rank": rank, "max_steps": max_steps},
            "linear_shapes": {p: list(s) for p, s in shapes.items()},
        },
        anchors=payloads,
    )


def _check_choices(executor: str, anchor_data: str) -> None:
    """InvalidInputError for an unknown executor or anchor-data mode."""
    if executor not in EXECUTORS:
        raise InvalidInputError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if anchor_data not in ANCHOR_DATA_MODES:
        raise InvalidInputError(
            f"unknown anchor data {anchor_data!r}; valid: {', '.join(ANCHOR_DATA_MODES)}"
        )


def _embed_users(
    emb: Any, users: Sequence[dict], task_obj: Any, progress: ProgressFn | None
) -> Any:
    """One embedding row per candidate user (their profile items' mean)."""
    from mta.embedding import user_embedding

    vectors = []
    for n, user in enumerate(users):
        vectors.append(user_embedding(emb, [task_obj.item_text(i) for i in user["profile"]]))
        report_progress(progress, "embed", n + 1, len(users))
    return np.stack(vectors)


def _plan_anchors(
    selection: Any,
    users: Sequence[dict],
    matrix: Any,
    lengths: Sequence[int],
    task_obj: Any,
    anchor_data: str,
) -> tuple[list[AnchorPayload], list[list[tuple[str, str]]], dict[str, list[str]]]:
    """Each selected anchor's payload (untrained), training examples and cluster members."""
    from mta.embedding import normalize_rows
    from mta.tasks import profile_examples

    # Whose history trained which anchor: deleting a user must find every anchor they fed.
    trained_on: dict[str, list[str]] = {}
    payloads: list[AnchorPayload] = []
    examples_of: list[list[tuple[str, str]]] = []
    for row in selection.anchor_rows:
        members = selection.members(selection.cluster_of[row])
        trained_on[str(users[row]["user_id"])] = (
            [str(users[m]["user_id"]) for m in members] if anchor_data == "cluster" else []
        )
        if anchor_data == "cluster":
            examples = [
                ex for m in members for ex in profile_examples(task_obj, users[m]["profile"])
            ]
            embedding = normalize_rows(matrix[members].mean(axis=0))
        else:
            examples = profile_examples(task_obj, users[row]["profile"])
            embedding = matrix[row]
        examples_of.append(examples)
        payloads.append(
            AnchorPayload(
                anchor_id=str(users[row]["user_id"]),
                adapter_bytes=b"",  # filled in once trained
                embedding=embedding,
                history_length=lengths[row],
                cluster_size=len(members),
            )
        )
    return payloads, examples_of, trained_on


def _train_anchors(
    ctx: RegistryContext,
    base: tuple[str, Any, Any],
    examples_of: Sequence[Sequence[tuple[str, str]]],
    config: TrainConfig,
    shapes: dict[str, tuple[int, int]],
    *,
    executor: str,
    address: str | None,
    workers: int,
    progress: ProgressFn | None,
) -> list[bytes]:
    """Each anchor's blob, in order: trained here one by one, or as Ray tasks."""
    model_name, model, tokenizer = base
    if executor == "ray":
        from mta.registry.jobs.bank_ray import train_anchors_ray

        return train_anchors_ray(
            ctx,
            model_name,
            examples_of,
            config,
            shapes,
            address=address,
            workers=workers,
            progress=progress,
        )
    trained = []
    for n, examples in enumerate(examples_of):
        trained.append(train_anchor_bytes(model, tokenizer, examples, config, shapes))
        report_progress(progress, "train", n + 1, len(examples_of))
    return trained


def train_anchor_bytes(
    model: Any,
    tokenizer: Any,
    examples: Sequence[tuple[str, str]],
    config: TrainConfig,
    shapes: dict[str, tuple[int, int]],
) -> bytes:
    """Train one anchor's meta-LoRA and return its checked fp16 blob (here or in a Ray task)."""
    from mta.peft_io import adapter_to_bytes, validate_against_shapes
    from mta.training import train_lora

    with MODEL_LOCK:
        adapter, _ = train_lora(model, tokenizer, examples, config, progress=False)
    adapter.check_finite()
    validate_against_shapes(adapter, shapes)
    return adapter_to_bytes(adapter, dtype=torch_dtype(BANK_ADAPTER_DTYPE))


def push_bank(
    ctx: RegistryContext,
    *,
    task: str,
    adapter_dirs: Sequence[Path],
    profiles_path: Path,
    base_model: str | None = None,
    embedder: str | None = None,
) -> BankVersion:
    """Publish externally trained PEFT LoRAs as a bank version.

    Args:
        task: LaMP task name.
        adapter_dirs: PEFT folders (adapter_config.json + adapter_model.safetensors); the
            anchor id is the folder name.
        profiles_path: per-user JSON whose `user_id`s are the folder names; each anchor's
            embedding comes from its profile.
        base_model, embedder: specs; adapters are validated against the base model's shapes.

    Raises:
        AdapterFormatError: a missing/garbled config, a pickle .bin, NaN weights.
        ShapeMismatchError: an adapter that does not fit the base model.
        InvalidInputError: duplicate folder names or an anchor without a profile.
    """
    from mta.base_model import linear_shapes
    from mta.embedding import user_embedding
    from mta.errors import ShapeMismatchError
    from mta.peft_io import adapter_to_bytes, load_peft_adapter, validate_against_shapes
    from mta.tasks import get_task

    task_obj = get_task(task)
    if not adapter_dirs:
        raise InvalidInputError("no adapter folders given")
    model_name = check_model_specs(base_model, embedder)
    ids = [Path(d).resolve().name for d in adapter_dirs]
    profiles = _pushed_profiles(ids, profiles_path, task_obj)
    adapters = [load_peft_adapter(d) for d in adapter_dirs]
    for adapter in adapters:
        adapter.check_finite()
    modules = sorted({m for a in adapters for m in a.target_modules()})
    model, _ = ctx.base_model(model_name)
    shapes = linear_shapes(model, modules)
    for anchor_id, adapter in zip(ids, adapters, strict=True):
        try:
            validate_against_shapes(adapter, shapes)
        except ShapeMismatchError as error:
            raise ShapeMismatchError(f"adapter {anchor_id!r}: {error}") from error
    emb = ctx.embedder(embedder)
    payloads = []
    for anchor_id, adapter in zip(ids, adapters, strict=True):
        profile = profiles[anchor_id]["profile"]
        payloads.append(
            AnchorPayload(
                anchor_id=anchor_id,
                adapter_bytes=adapter_to_bytes(adapter, dtype=torch_dtype(BANK_ADAPTER_DTYPE)),
                embedding=user_embedding(emb, [task_obj.item_text(i) for i in profile]),
                history_length=len(profile),
                cluster_size=1,
            )
        )
    rank = max(r for a in adapters for r in a.ranks().values())
    return publish_bank(
        ctx,
        task=task,
        base_model=model_name,
        embedder=emb.name,
        target_modules=modules,
        rank=rank,
        anchor_data="pushed",
        config={
            "source": "push",
            "adapter_dirs": [str(Path(d).resolve()) for d in adapter_dirs],
            "profiles_path": str(Path(profiles_path)),
            "linear_shapes": {p: list(s) for p, s in shapes.items()},
        },
        anchors=payloads,
    )


def _pushed_profiles(ids: list[str], profiles_path: Path, task_obj: Any) -> dict[str, dict]:
    """The profile of each pushed anchor (folder names unique, each with a profile)."""
    from mta.lamp_data import load_users

    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InvalidInputError(f"adapter folder names must be unique: {', '.join(duplicates)}")
    profiles = {
        u["user_id"]: u for u in load_users(profiles_path, require_gold=False, task=task_obj)
    }
    missing = [i for i in ids if i not in profiles]
    if missing:
        raise InvalidInputError(
            f"{profiles_path} has no profile for anchor(s) {', '.join(missing)}"
        )
    return profiles
