"""Training a bank's anchors here: one meta-LoRA per anchor, returned as its checked fp16 blob.

`build.build_bank` trains the anchors one after another in this process
(`train_anchors_local`); `jobs.bank_ray` runs `train_anchor_bytes` as one Ray task per
anchor instead. Both return the same blobs, which `versions.publish_bank` then stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mta.dtypes import torch_dtype
from mta.progress import ProgressFn
from mta.registry.banks.versions import BANK_ADAPTER_DTYPE, report_progress
from mta.registry.context import MODEL_LOCK

if TYPE_CHECKING:
    from mta.training import TrainConfig

Examples = Sequence[tuple[str, str]]  # an anchor's (prompt, target) training examples


def train_anchor_bytes(
    model: Any,
    tokenizer: Any,
    examples: Examples,
    config: TrainConfig,
    shapes: dict[str, tuple[int, int]],
) -> bytes:
    """Train one anchor's meta-LoRA and return its checked fp16 blob (here or in a Ray task).

    Raises:
        AdapterFormatError: the trained adapter has NaN or infinite weights.
        ShapeMismatchError: the adapter does not fit `shapes`.
    """
    from mta.adapter_blob import adapter_to_bytes
    from mta.peft_io import validate_against_shapes
    from mta.training import train_lora

    with MODEL_LOCK:
        adapter, _ = train_lora(model, tokenizer, examples, config, progress=False)
    adapter.check_finite()
    validate_against_shapes(adapter, shapes)
    return adapter_to_bytes(adapter, dtype=torch_dtype(BANK_ADAPTER_DTYPE))


def train_anchors_local(
    model: Any,
    tokenizer: Any,
    examples_of: Sequence[Examples],
    config: TrainConfig,
    shapes: dict[str, tuple[int, int]],
    progress: ProgressFn | None = None,
) -> list[bytes]:
    """Every anchor's blob, in order, trained one after another on `model`.

    Args:
        examples_of: each anchor's (prompt, target) examples.
        progress: called as ("train", done, total) as anchors finish.
    """
    trained = []
    for n, examples in enumerate(examples_of):
        trained.append(train_anchor_bytes(model, tokenizer, examples, config, shapes))
        report_progress(progress, "train", n + 1, len(examples_of))
    return trained
