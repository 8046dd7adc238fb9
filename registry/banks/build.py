"""Building bank versions: select anchors and train meta-LoRAs (`build_bank`), or publish
externally trained PEFT LoRAs as anchors (`push_bank`). Both check every argument before
any work, then hand the anchors to `versions.publish_bank`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mta.dtypes import torch_dtype
from mta.registry.banks.anchor_training import train_anchors_local
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
from mta.registry.context import RegistryContext
from mta.registry.entities import BankVersion
from mta.registry.errors import InvalidInputError
from mta.registry.jobs.bank_ray import train_anchors_ray

if TYPE_CHECKING:
    from mta.anchors import AnchorSelection
    from mta.lora import LoraAdapter
    from mta.training import TrainConfig

EXECUTORS = ("local", "ray")
# k-means (scikit-learn) takes a 32-bit random state; the build passes it the --seed.
MAX_BUILD_SEED = 2**32 - 1


@dataclass
class AnchorPlan:
    """The selected anchors of a build, before training.

    Attributes:
        payloads: one per anchor, in order; `adapter_bytes` is empty until trained.
        examples: each anchor's (prompt, target) training examples.
        trained_on: anchor id -> the users whose history trained it (cluster mode), so
            deleting a user finds every anchor they fed.
    """

    payloads: list[AnchorPayload]
    examples: list[list[tuple[str, str]]]
    trained_on: dict[str, list[str]]

    def trained(self, blobs: Sequence[bytes]) -> list[AnchorPayload]:
        """The payloads with their trained adapter blobs (in anchor order) filled in."""
        for payload, adapter_bytes in zip(self.payloads, blobs, strict=True):
            payload.adapter_bytes = adapter_bytes
        return self.payloads


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
    lr: float = 1e-3,
    base_model: str | None = None,
    embedder: str | None = None,
    seed: int = 0,
    target_modules: Sequence[str] | None = None,
    max_steps: int | None = None,
    progress: ProgressFn | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
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
            a Ray task (`bank_ray.train_anchors_ray`) on `address` with `workers` at once,
            each reserving `gpus_per_worker` GPUs and training on `ctx.device`.
            Either way this process stores every blob, then publishes in one transaction.

    Returns:
        The new bank version.
    """
    from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes
    from mta.lamp_data import load_users
    from mta.tasks import get_task

    _check_choices(executor, anchor_data, seed)
    task_obj = get_task(task)
    modules = list(target_modules or DEFAULT_TARGET_MODULES)
    config = _train_config(modules, rank=rank, epochs=epochs, lr=lr, seed=seed, max_steps=max_steps)
    # Every argument and the schema are checked before any embedding or training work.
    model_name = check_model_specs(base_model, embedder)
    with ctx.read_session():
        pass
    users = load_users(data_path, require_gold=False, task=task_obj)
    check_enough_candidates(users, anchors, min_history)
    emb = ctx.embedder(embedder)
    matrix = _embed_users(emb, users, task_obj, progress)
    selection = _select(matrix, users, anchors, min_history=min_history, seed=seed)
    plan = _plan_anchors(selection, users, matrix, task_obj, anchor_data)
    model, tokenizer = ctx.base_model(model_name)
    shapes = linear_shapes(model, modules)
    ray = {"address": address, "workers": workers, "num_gpus": gpus_per_worker}
    if executor == "ray":
        train = functools.partial(train_anchors_ray, ctx, model_name, device=ctx.device, **ray)
    else:
        train = functools.partial(train_anchors_local, model, tokenizer)
    trained = train(plan.examples, config, shapes, progress=progress)
    return publish_bank(
        ctx,
        task=task,
        base_model=model_name,
        embedder=emb.name,
        target_modules=modules,
        rank=rank,
        anchor_data=anchor_data,
        config=_build_record(plan, data_path, len(users), min_history, config, shapes),
        anchors=plan.trained(trained),
    )


def _check_choices(executor: str, anchor_data: str, seed: int) -> None:
    """InvalidInputError for an unknown executor or anchor-data mode, or a seed k-means refuses."""
    if not 0 <= seed <= MAX_BUILD_SEED:
        raise InvalidInputError(
            f"seed must be between 0 and {MAX_BUILD_SEED} (the k-means random state), got {seed}"
        )
    if executor not in EXECUTORS:
        raise InvalidInputError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if anchor_data not in ANCHOR_DATA_MODES:
        raise InvalidInputError(
            f"unknown anchor data {anchor_data!r}; valid: {', '.join(ANCHOR_DATA_MODES)}"
        )


def _train_config(modules: list[str], **options: Any) -> TrainConfig:
    """The training config every anchor shares, validated (MtaError naming a bad field)."""
    from mta.training import TrainConfig

    config = TrainConfig(target_modules=modules, **options)
    config.validate()
    return config


def _shapes_record(shapes: dict[str, tuple[int, int]]) -> dict[str, list[int]]:
    """The base model's (out, in) per module as the bank row records them (JSON lists)."""
    return {path: list(shape) for path, shape in shapes.items()}


def _build_record(
    plan: AnchorPlan,
    data_path: Path,
    candidates: int,
    min_history: int,
    config: TrainConfig,
    shapes: dict[str, tuple[int, int]],
) -> dict[str, Any]:
    """The `config` a built bank version records: its inputs, training and shapes."""
    return {
        "source": "build",
        "anchor_members": plan.trained_on,
        "data_path": str(Path(data_path)),
        "candidates": candidates,
        "min_history": min_history,
        "seed": config.seed,
        "train": {
            "epochs": config.epochs,
            "lr": config.lr,
            "rank": config.rank,
            "max_steps": config.max_steps,
        },
        "linear_shapes": _shapes_record(shapes),
    }


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


def _select(
    matrix: Any, users: Sequence[dict], anchors: int, *, min_history: int, seed: int
) -> AnchorSelection:
    """k-means anchor selection over the embedded candidates (InvalidInputError if impossible)."""
    from mta.anchors import select_anchors

    lengths = [len(u["profile"]) for u in users]
    try:
        return select_anchors(matrix, lengths, anchors, min_history=min_history, seed=seed)
    except ValueError as error:
        raise InvalidInputError(str(error)) from error


def _plan_anchors(
    selection: AnchorSelection,
    users: Sequence[dict],
    matrix: Any,
    task_obj: Any,
    anchor_data: str,
) -> AnchorPlan:
    """Each selected anchor's payload (untrained), training examples and cluster members."""
    from mta.embedding import normalize_rows
    from mta.tasks import profile_examples

    plan = AnchorPlan(payloads=[], examples=[], trained_on={})
    for row in selection.anchor_rows:
        members = selection.members(selection.cluster_of[row])
        anchor_id = str(users[row]["user_id"])
        if anchor_data == "cluster":
            plan.trained_on[anchor_id] = [str(users[m]["user_id"]) for m in members]
            examples = [
                ex for m in members for ex in profile_examples(task_obj, users[m]["profile"])
            ]
            embedding = normalize_rows(matrix[members].mean(axis=0))
        else:
            plan.trained_on[anchor_id] = []
            examples = profile_examples(task_obj, users[row]["profile"])
            embedding = matrix[row]
        plan.examples.append(examples)
        plan.payloads.append(
            AnchorPayload(
                anchor_id=anchor_id,
                adapter_bytes=b"",  # filled in once trained
                embedding=embedding,
                history_length=len(users[row]["profile"]),
                cluster_size=len(members),
            )
        )
    return plan


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
    from mta.tasks import get_task

    task_obj = get_task(task)
    _check_adapter_dirs(adapter_dirs)
    model_name = check_model_specs(base_model, embedder)
    ids = [Path(d).resolve().name for d in adapter_dirs]
    profiles = _pushed_profiles(ids, profiles_path, task_obj)
    adapters = _load_pushed(adapter_dirs)
    modules = sorted({m for a in adapters for m in a.target_modules()})
    model, _ = ctx.base_model(model_name)
    shapes = linear_shapes(model, modules)
    _check_pushed_shapes(ids, adapters, shapes)
    emb = ctx.embedder(embedder)
    return publish_bank(
        ctx,
        task=task,
        base_model=model_name,
        embedder=emb.name,
        target_modules=modules,
        rank=max(r for a in adapters for r in a.ranks().values()),
        anchor_data="pushed",
        config={
            "source": "push",
            "adapter_dirs": [str(Path(d).resolve()) for d in adapter_dirs],
            "profiles_path": str(Path(profiles_path)),
            "linear_shapes": _shapes_record(shapes),
        },
        anchors=_pushed_payloads(ids, adapters, profiles, emb, task_obj),
    )


def _check_adapter_dirs(adapter_dirs: Sequence[Path]) -> None:
    """InvalidInputError unless every adapter folder exists (checked before the profiles)."""
    if not adapter_dirs:
        raise InvalidInputError("no adapter folders given")
    for folder in map(Path, adapter_dirs):
        if not folder.exists():
            raise InvalidInputError(f"adapter folder {folder} does not exist")
        if not folder.is_dir():
            raise InvalidInputError(f"adapter folder {folder} is not a folder")


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


def _load_pushed(adapter_dirs: Sequence[Path]) -> list[LoraAdapter]:
    """Read each PEFT folder and refuse NaN or infinite weights (AdapterFormatError)."""
    from mta.peft_io import load_peft_adapter

    adapters = [load_peft_adapter(d) for d in adapter_dirs]
    for adapter in adapters:
        adapter.check_finite()
    return adapters


def _check_pushed_shapes(
    ids: Sequence[str], adapters: Sequence[LoraAdapter], shapes: dict[str, tuple[int, int]]
) -> None:
    """ShapeMismatchError naming the first pushed adapter that does not fit the base model."""
    from mta.errors import ShapeMismatchError
    from mta.peft_io import validate_against_shapes

    for anchor_id, adapter in zip(ids, adapters, strict=True):
        try:
            validate_against_shapes(adapter, shapes)
        except ShapeMismatchError as error:
            raise ShapeMismatchError(f"adapter {anchor_id!r}: {error}") from error


def _pushed_payloads(
    ids: Sequence[str],
    adapters: Sequence[LoraAdapter],
    profiles: dict[str, dict],
    emb: Any,
    task_obj: Any,
) -> list[AnchorPayload]:
    """One payload per pushed adapter: its fp16 blob and its profile's embedding."""
    from mta.adapter_blob import adapter_to_bytes
    from mta.embedding import user_embedding

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
    return payloads
