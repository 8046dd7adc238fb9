"""The MTA methods: fused anchors from the seed's bank, with or without the trained stack.

The three are one class configured three ways (variants are instances, not subclasses).
"""

from __future__ import annotations

from mta.evaluation.method import EvalMethod
from mta.evaluation.seed_run import SeedRun


class BankMethod(EvalMethod):
    """Fuse each test user's nearest anchors through the registry; optionally stack.

    Args:
        name: registry key.
        summary: one line for tables.
        fusion: the fusion method, or None for the run's ``--fusion``.
        stacked: train the per-user stack on the shots and predict with it on top.
        user_tag: suffix of the registry user; methods with the same tag share the user
            (and so its recipe), as `mta-fuse` and `mta` do.
    """

    needs_bank = True

    def __init__(
        self, name: str, summary: str, *, fusion: str | None, stacked: bool, user_tag: str
    ) -> None:
        self.name = name
        self.summary = summary
        self.fusion = fusion
        self.stacked = stacked
        self.user_tag = user_tag
        self.trains = "bank+per-user" if stacked else "bank"

    def predict(self, run: SeedRun) -> list[str]:
        """Register, fuse (and adapt) every test entry, then generate with its adapter."""
        bank = run.pool_bank()  # built outside this method's timer: it has its own
        fusion = self.fusion or run.options.fusion
        out: list[str] = []
        with run.timer(self.name):
            for n, e in enumerate(run.entries):
                user_id, recipe = bank.user(run, n, self.user_tag, fusion)
                adapter = bank.fused(user_id)
                if self.stacked:
                    adapter = bank.stacked(run, user_id, adapter, e)
                out.extend(run.model().predict(e.items, adapter))
                run.report(self.name, n + 1, len(run.entries))
        return out


MTA_FUSE = BankMethod(
    "mta-fuse",
    "fused anchor LoRAs only (exact 'cat' fusion)",
    fusion=None,
    stacked=False,
    user_tag="",
)
MTA = BankMethod(
    "mta",
    "fused anchors + low-rank stack trained on the shots",
    fusion=None,
    stacked=True,
    user_tag="",
)
MTA_FACTORWISE = BankMethod(
    "mta-factorwise",
    "the paper's factor-wise merge + stack (reference parity)",
    fusion="factorwise",
    stacked=True,
    user_tag="-fw",
)
