"""Prediction (generation or label ranking) and baseline training on the shared base model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mta.evaluation.options import EvalOptions
from mta.evaluation.protocol import EvalItem
from mta.registry.context import MODEL_LOCK


class Predictor:
    """Predicts with the shared base model: parsed generations, or ranked labels."""

    def __init__(self, task: Any, options: EvalOptions) -> None:
        from mta.base_model import load_base_model

        self.task = task
        self.options = options
        self.model, self.tokenizer = load_base_model(options.base_model, device=options.device)
        self.max_new_tokens = options.max_new_tokens or (8 if task.labels else 24)

    def predict(
        self,
        items: Sequence[EvalItem],
        adapter: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Predictions of the base model, with ``adapter`` merged in memory if given.

        ``decode`` "generate" parses a greedy generation; "rank" (classification tasks)
        answers the task label with the highest length-normalized log-likelihood.
        ``progress(done, total)`` is called after every batch of ``batch_size`` items.
        """
        from contextlib import nullcontext

        from mta.inference import apply_adapter, generate
        from mta.ranking import rank_labels

        prompts = [it.prompt for it in items]
        rank_decode = self.options.decode == "rank" and bool(self.task.labels)
        outputs: list[str] = []
        size = self.options.batch_size
        with MODEL_LOCK:
            merged = apply_adapter(self.model, adapter) if adapter is not None else nullcontext()
            with merged:
                for start in range(0, len(prompts), size):
                    batch = prompts[start : start + size]
                    if rank_decode:
                        found = rank_labels(
                            self.model, self.tokenizer, batch, self.task.labels, batch_size=size
                        )
                    else:
                        found = generate(
                            self.model,
                            self.tokenizer,
                            batch,
                            max_new_tokens=self.max_new_tokens,
                            batch_size=size,
                        )
                    outputs.extend(found)
                    if progress is not None:
                        progress(len(outputs), len(prompts))
        if rank_decode:
            # Already labels of the set: parsing could only lose them.
            return outputs
        return [self.task.parse(t, it.query_input) for t, it in zip(outputs, items, strict=True)]

    def train(
        self,
        examples: Sequence,
        *,
        rank: int,
        epochs: int,
        lr: float,
        seed: int,
        target_modules: Sequence[str] | None = None,
    ) -> Any:
        """A LoRA trained from scratch on ``examples`` (task-lora, OPPU, stack-only)."""
        from mta.training import TrainConfig, train_lora

        config = TrainConfig(
            rank=rank, epochs=epochs, lr=lr, seed=seed, max_steps=self.options.max_steps
        )
        if target_modules is not None:
            config.target_modules = list(target_modules)
        with MODEL_LOCK:
            adapter, _ = train_lora(self.model, self.tokenizer, examples, config, progress=False)
        return adapter
