"""Generation and baseline training on the one base model every method shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mta.evaluation.options import EvalOptions
from mta.evaluation.protocol import EvalItem
from mta.registry.context import MODEL_LOCK


class Predictor:
    """Generates and parses predictions with the shared base model."""

    def __init__(self, task: Any, options: EvalOptions) -> None:
        from mta.base_model import load_base_model

        self.task = task
        self.options = options
        self.model, self.tokenizer = load_base_model(options.base_model)
        self.max_new_tokens = options.max_new_tokens or (8 if task.labels else 24)

    def predict(
        self,
        items: Sequence[EvalItem],
        adapter: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Parsed predictions of the base model, with ``adapter`` merged in memory if given.

        ``progress(done, total)`` is called after every generation batch.
        """
        from contextlib import nullcontext

        from mta.inference import apply_adapter, generate

        prompts = [it.prompt for it in items]
        texts: list[str] = []
        size = self.options.batch_size
        with MODEL_LOCK:
            merged = apply_adapter(self.model, adapter) if adapter is not None else nullcontext()
            with merged:
                for start in range(0, len(prompts), size):
                    texts.extend(
                        generate(
                            self.model,
                            self.tokenizer,
                            prompts[start : start + size],
                            max_new_tokens=self.max_new_tokens,
                            batch_size=size,
                        )
                    )
                    if progress is not None:
                        progress(len(texts), len(prompts))
        return [self.task.parse(t, it.query_input) for t, it in zip(texts, items, strict=True)]

    def train(self, examples: Sequence, *, rank: int, epochs: int, lr: float, seed: int) -> Any:
        """A LoRA trained from scratch on ``examples`` (task-lora and OPPU baselines)."""
        from mta.training import TrainConfig, train_lora

        config = TrainConfig(
            rank=rank, epochs=epochs, lr=lr, seed=seed, max_steps=self.options.max_steps
        )
        with MODEL_LOCK:
            adapter, _ = train_lora(self.model, self.tokenizer, examples, config, progress=False)
        return adapter
