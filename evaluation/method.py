"""The contract of an evaluation method, and the one seed's state every method is given.

A method is a class with a ``name`` and a ``predict(run)`` that returns one parsed
prediction per scored item of the seed. Methods are listed once, by name, in
`mta.evaluation.methods`; the runner never branches on a method's name.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mta.evaluation.options import EvalOptions
from mta.evaluation.protocol import EvalEntry, EvalItem, Split
from mta.progress import ProgressFn

if TYPE_CHECKING:
    from mta.evaluation.bank import PoolBank
    from mta.evaluation.predictor import Predictor
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
class SeedRun:
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
    _bank: PoolBank | None = field(default=None, repr=False)

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

    def pool_bank(self) -> PoolBank:
        """The bank built from this seed's pool, built through the registry on first use."""
        from mta.evaluation.bank import PoolBank

        if self._bank is None:
            self._bank = PoolBank.build(self)
            self.info["bank_version"] = self._bank.bank.version
            self.info["anchors"] = self._bank.bank.num_anchors
        return self._bank

    def close(self) -> None:
        """Delete the registry users the seed created (the bank stays, as a record)."""
        if self._bank is not None:
            self._bank.close()


class EvalMethod(abc.ABC):
    """One method compared by `mta eval`.

    Attributes:
        name: registry key used on the command line.
        summary: one line for tables and `--help`.
        trains: what it trains per run ("none", "pool", "per-user", "bank", "bank+per-user").
        uses_model: whether it generates with the base model (trivial baselines do not).
        needs_bank: whether it needs the anchor bank built from the pool.
        classification_only: only meaningful when outputs are labels (the task has labels).
    """

    name: str
    summary: str
    trains: str = "none"
    uses_model: bool = True
    needs_bank: bool = False
    classification_only: bool = False

    @abc.abstractmethod
    def predict(self, run: SeedRun) -> list[str]:
        """One parsed prediction per item of ``run.items``, in that order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
