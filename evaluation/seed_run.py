"""A seed as the evaluation methods see it: its state, and the pool bank built on first use."""

from __future__ import annotations

from dataclasses import dataclass, field

from mta.evaluation.bank import PoolBank
from mta.evaluation.seed_state import SeedState


@dataclass
class SeedRun(SeedState):
    """The seed's state (`SeedState`) plus the bank built from its pool, which it owns."""

    _bank: PoolBank | None = field(default=None, repr=False)

    def pool_bank(self) -> PoolBank:
        """The bank built from this seed's pool, built through the registry on first use."""
        if self._bank is None:
            self._bank = PoolBank.build(self)
            self.info["bank_version"] = self._bank.bank.version
            self.info["anchors"] = self._bank.bank.num_anchors
        return self._bank

    def close(self) -> None:
        """Delete the registry users the seed created (the bank stays, as a record)."""
        if self._bank is not None:
            self._bank.close()
