"""The contract of an evaluation method.

A method is a class with a ``name`` and a ``predict(run)`` that returns one parsed
prediction per scored item of the seed; ``run`` is the seed's `SeedRun`
(`mta.evaluation.seed_run`). Methods are listed once, by name, in
`mta.evaluation.methods`; the runner never branches on a method's name.
"""

from __future__ import annotations

import abc

from mta.evaluation.seed_run import SeedRun


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
