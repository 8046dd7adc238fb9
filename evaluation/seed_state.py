"""One seed of an evaluation: its split, its scored items, and the resources its methods share.

The pool bank (`mta.evaluation.bank`) is built from this state, and `mta.evaluation.seed_run`
adds the bank on top of it, so neither of those modules imports the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mta.evaluation.options import EvalOptions
from mta.evaluation.predictor import Predictor
from mta.evaluation.protocol import EvalEntry, EvalItem, Split
from mta.progress import ProgressFn
from mta.registry.context import RegistryContext

LogFn = Callable[[str], None]


class Timer:
    """Adds the wall time of a block to ``timings[name]``."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.t0 = time.monotonic()

    def __exit__(self, *_exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.monotonic() - self.t0


@dataclass
class SeedState:
    """One seed of an evaluation: the split, its scored items, and the shared resources."""

    options: EvalOptions
    ctx: RegistryContext
    task: Any
    split: Split
    entries: list[EvalEntry]
    predictor: Predictor | None
    timings: dict[str, float]
    report: ProgressFn
    say: LogFn
    notes: list[str]
    info: dict[str, Any]  # the seed's entry in the result's "splits"

    @property
    def seed(self) -> int:
        """The split and training seed."""
        return self.split.seed

    @property
    def items(self) -> list[EvalItem]:
        """Every scored item of the seed, entry by entry (the order of every prediction list)."""
        return [it for e in self.entries for it in e.items]

    def timer(self, name: str) -> Timer:
        """A block whose wall time is added to ``timings[name]``."""
        return Timer(self.timings, name)

    def progress(self, stage: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback reporting under ``stage``."""
        return lambda done, total: self.report(stage, done, total)

    def model(self) -> Predictor:
        """The shared base model (the runner loads it when any method generates)."""
        if self.predictor is None:
            raise RuntimeError("a method that generates ran without the base model loaded")
        return self.predictor
