"""LoRA training in memory, plain or stacked on a frozen fused adapter.

The trainable LoRA is a set of forward hooks on the base model's Linear layers, so the
model's structure is never changed and nothing is left behind once training returns. A
frozen adapter is merged into the base weights for the duration of training (a step then
costs what a plain LoRA step costs) and the pristine weights are copied back afterwards.

Prompts are used raw, without a chat template, both in training and in
``mta.inference.generate``; the same text gives the same tokens in both places.

These functions modify the shared model temporarily, so they are not thread-safe: callers
that share one model between threads serialize its use (the registry holds a lock).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes
from mta.errors import MtaError
from mta.examples import encode_example
from mta.inference import apply_adapter, device_of, padding_id

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from mta.lora import LoraAdapter

Example = tuple[str, str]  # (prompt, target); the loss covers only the target tokens
IGNORE_INDEX = -100


@dataclass
class TrainConfig:
    """Hyper-parameters of one LoRA training run; ``alpha=None`` means ``2 * rank``."""

    rank: int = 8
    alpha: float | None = None
    epochs: int = 1
    lr: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 256
    seed: int = 0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    weight_decay: float = 0.0
    max_steps: int | None = None  # stop after this many optimizer steps (None: all epochs)

    @property
    def scale(self) -> float:
        """The LoRA scaling ``alpha / rank``."""
        alpha = self.alpha if self.alpha is not None else 2.0 * self.rank
        return float(alpha) / self.rank

    def validate(self) -> None:
        """Raise MtaError with a one-line message if a field is out of range."""
        positive = {
            "rank": self.rank,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "max_length": self.max_length,
        }
        for name, value in positive.items():
            if int(value) != value or value < 1:
                raise MtaError(f"train config: {name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MtaError(f"train config: lr must be a positive number, got {self.lr!r}")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise MtaError(f"train config: alpha must be a positive number, got {self.alpha!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise MtaError(f"train config: max_steps must be >= 1, got {self.max_steps!r}")
        if not self.target_modules:
            raise MtaError("train config: target_modules is empty")


def planned_steps(num_examples: int, config: TrainConfig) -> int:
    """Optimizer steps `train_lora` takes on this many examples (epochs, accumulation, cap)."""
    micro_per_epoch = math.ceil(num_examples / config.batch_size)
    total = math.ceil(micro_per_epoch / config.grad_accum) * config.epochs
    return min(total, config.max_steps) if config.max_steps is not None else total


def train_lora(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    config: TrainConfig,
    *,
    frozen: LoraAdapter | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[LoraAdapter, list[float]]:
    """Train a LoRA on ``examples``, optionally stacked on a frozen adapter.

    The model is left bit-identical, with no hooks, whatever happens (exceptions and
    KeyboardInterrupt included). Runs are deterministic for ``config.seed`` on one device.

    Args:
        model: the base causal LM (its weights are not trained).
        tokenizer: its tokenizer.
        examples: ``(prompt, target)`` pairs; the loss covers the target plus EOS.
        config: hyper-parameters.
        frozen: an adapter (the fused one) held fixed under the trainable stack; its delta is
            merged into the weights in memory during training, never written to disk.
        progress: show a rich progress bar on stderr.
        on_step: called as ``on_step(step, loss)`` after each optimizer step (1-based).

    Returns:
        ``(adapter, losses)``: the trained LoRA (``delta()`` is exactly what was trained) and
        the mean target-token loss of every optimizer step.

    Raises:
        MtaError: no examples or a bad config.
        ShapeMismatchError: ``frozen`` or a target module does not fit the model.
    """
    import torch

    from mta.lora import LoraAdapter, LoraModule

    config.validate()
    if not examples:
        raise MtaError("no training examples")
    shapes = linear_shapes(model, config.target_modules)
    encoded = [
        encode_example(tokenizer, prompt, target, config.max_length) for prompt, target in examples
    ]
    init_gen = torch.Generator().manual_seed(config.seed)
    order_gen = torch.Generator().manual_seed(config.seed + 1)
    factors = init_factors(model, shapes, config.rank, init_gen)
    params = [p for pair in factors.values() for p in pair]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = planned_steps(len(encoded), config)
    pad_id = padding_id(tokenizer)
    losses: list[float] = []

    with (
        frozen_base(model),
        _frozen_adapter(model, frozen),
        _lora_hooks(model, factors, config.scale),
        _progress(progress, total_steps) as bar,
    ):
        for _ in range(config.epochs):
            order = torch.randperm(len(encoded), generator=order_gen).tolist()
            for group_ids in step_groups(order, config.batch_size, config.grad_accum):
                if len(losses) >= total_steps:
                    break
                group = [[encoded[i] for i in ids] for ids in group_ids]
                loss = _optimizer_step(model, group, optimizer, pad_id)
                losses.append(loss)
                bar(loss)
                if on_step is not None:
                    on_step(len(losses), loss)

    scale = config.scale
    modules = {
        path: LoraModule(
            A=a.detach().to("cpu", copy=True), B=b.detach().to("cpu", copy=True), scale=scale
        )
        for path, (a, b) in factors.items()
    }
    base_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    return LoraAdapter(modules=modules, base_model=base_name), losses


def step_groups(order: list[int], batch_size: int, grad_accum: int) -> list[list[list[int]]]:
    """Split example indices into optimizer steps of ``grad_accum`` micro-batches each."""
    micro = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [micro[i : i + grad_accum] for i in range(0, len(micro), grad_accum)]


def _optimizer_step(
    model: torch.nn.Module,
    group: list[list[tuple[list[int], list[int]]]],
    optimizer: torch.optim.Optimizer,
    pad_id: int,
) -> float:
    """Accumulate gradients over micro-batches and step; return the mean target-token loss."""
    # Token-weighted over the whole group, so accumulation equals one big batch.
    n_tokens = sum(len(target) for batch in group for _, target in batch)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for batch in group:
        loss_sum = _batch_loss_sum(model, batch, pad_id)
        (loss_sum / n_tokens).backward()
        total += float(loss_sum.detach())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / n_tokens


def _batch_loss_sum(
    model: torch.nn.Module, batch: list[tuple[list[int], list[int]]], pad_id: int
) -> torch.Tensor:
    """Summed cross-entropy of the target tokens of one left-padded micro-batch."""
    import torch

    logits, labels = target_logits(model, batch, pad_id)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def target_logits(
    model: torch.nn.Module, batch: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one left-padded batch; (fp32 logits, labels) at the positions that predict targets.

    Both are (rows, positions); label IGNORE_INDEX marks a position with nothing to predict.
    """
    import torch

    seqs = [prompt + target for prompt, target in batch]
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), length), dtype=torch.long)
    labels = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
    for row, ((_, target), seq) in enumerate(zip(batch, seqs, strict=True)):
        input_ids[row, length - len(seq) :] = torch.tensor(seq)
        attention[row, length - len(seq) :] = 1
        labels[row, length - len(target) :] = torch.tensor(target)
    # Left padding puts every target at the right edge, so only the last few positions need
    # logits: the vocabulary projection is skipped for the (long) prompts.
    keep = min(length, max(len(target) for _, target in batch) + 1)
    device = device_of(model)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    kwargs = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention.to(device),
        "position_ids": position_ids.to(device),
        "use_cache": False,
    }
    if accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits[:, -keep:, :]
    return logits[:, :-1, :].float(), labels[:, length - keep + 1 :].to(device)


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model's forward can skip the LM head for most positions."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def init_factors(
    model: torch.nn.Module,
    shapes: dict[str, tuple[int, int]],
    rank: int,
    generator: torch.Generator,
) -> dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """Fresh fp32 LoRA factors per module: A kaiming-uniform (as PEFT), B zeros."""
    import torch

    device = device_of(model)
    factors = {}
    for path, (out_features, in_features) in shapes.items():
        a = torch.empty(rank, in_features)
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        b = torch.zeros(out_features, rank)
        factors[path] = (
            torch.nn.Parameter(a.to(device)),
            torch.nn.Parameter(b.to(device)),
        )
    return factors


@contextmanager
def frozen_base(model: torch.nn.Module) -> Iterator[None]:
    """Freeze every base parameter and switch to eval mode; restore both afterwards."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        # Eval mode: no dropout, so steps are deterministic and match inference.
        model.eval()
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)


@contextmanager
def _frozen_adapter(model: torch.nn.Module, frozen: LoraAdapter | None) -> Iterator[None]:
    """Hold `frozen` (the fused adapter) fixed under the stack while training.

    In fp32 its delta is merged into the weights (a step then costs what a plain LoRA
    step costs) and the weights are restored bit-exactly afterwards. In bf16/fp16 (a GPU)
    merging would round a small delta away against the weights, so it runs unmerged as a
    frozen fp32 LoRA branch instead.
    """
    import torch

    if frozen is None:
        yield
        return
    if next(model.parameters()).dtype == torch.float32:
        with apply_adapter(model, frozen):
            yield
        return
    device = device_of(model)
    branches = {
        path: (m.A.to(device, torch.float32), m.B.to(device, torch.float32), m.scale)
        for path, m in frozen.modules.items()
    }
    with _branch_hooks(model, branches):
        yield


@contextmanager
def _lora_hooks(
    model: torch.nn.Module,
    factors: dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]],
    scale: float,
) -> Iterator[None]:
    """Add ``scale · x Aᵀ Bᵀ`` to each targeted Linear's output via forward hooks."""
    with _branch_hooks(model, {path: (a, b, scale) for path, (a, b) in factors.items()}):
        yield


@contextmanager
def _branch_hooks(
    model: torch.nn.Module, branches: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
) -> Iterator[None]:
    """One LoRA branch hook per module path (A, B, scale); all removed on exit."""
    handles = []
    try:
        for path, (a, b, scale) in branches.items():
            handles.append(model.get_submodule(path).register_forward_hook(_lora_hook(a, b, scale)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _lora_hook(a: torch.Tensor, b: torch.Tensor, scale: float) -> Callable:
    """Forward hook computing a LoRA branch in fp32 on top of the layer's output."""

    def hook(_module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0].to(a.dtype)
        return output + ((x @ a.T) @ b.T * scale).to(output.dtype)

    return hook


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[float], None]]:
    """Yield a callback advancing a rich progress bar (a no-op when disabled)."""
    if not enabled:
        yield lambda _loss: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("training", total=total, loss="-")
        yield lambda loss: bar.update(task, advance=1, loss=f"{loss:.4f}")
