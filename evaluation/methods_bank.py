"""The MTA methods: fused anchors from the seed's bank, with or without the trained stack.

They are one class configured several ways (variants are instances, not subclasses):
`mta-fuse`, `mta` and `mta-factorwise` are the method; the others are ablations of how
the stack is stored, where it trains and how the adapter is exported (`StackVariant`).
"""

from __future__ import annotations

from mta.evaluation.bank import StackVariant
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
            (and so its recipe and its trained stack), as `mta-fuse` and `mta` do.
        variant: how the trained stack becomes the scored adapter (stacked methods).
    """

    needs_bank = True

    def __init__(
        self,
        name: str,
        summary: str,
        *,
        fusion: str | None,
        stacked: bool,
        user_tag: str,
        variant: StackVariant = StackVariant(),
    ) -> None:
        self.name = name
        self.summary = summary
        self.fusion = fusion
        self.stacked = stacked
        self.user_tag = user_tag
        self.variant = variant
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
                    adapter = bank.stacked(run, n, self.user_tag, adapter, self.variant)
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


def _ablation(name: str, summary: str, *, user_tag: str = "", **variant: object) -> BankMethod:
    """An `mta` variant: fused anchors and a stack, turned into the adapter as `variant` says."""
    return BankMethod(
        name,
        summary,
        fusion=None,
        stacked=True,
        user_tag=user_tag,
        variant=StackVariant(**variant),  # type: ignore[arg-type]
    )


# Ablations of the `mta` stack (#20, #23): not in the defaults; `mta eval --methods` names them.
MTA_INT8 = _ablation(
    "mta-int8", "the mta stack stored as int8 (one scale per rank component)", stack_format="int8"
)
MTA_NF4 = _ablation(
    "mta-nf4",
    "the mta stack stored as 4-bit NF4 (one fp16 scale per 64 values)",
    stack_format="nf4",
)
MTA_ATTENTION = _ablation(
    "mta-attention",
    "a stack trained on the attention projections only (q, k, v, o)",
    user_tag="-attn",
    modules="attention",
)
MTA_EXPORT = _ablation(
    "mta-export",
    "the adapter mta publish serves: fused + stack at one exact rank, fp16",
    exported=True,
)
MTA_EXPORT_R16 = _ablation(
    "mta-export-r16",
    "the published adapter compressed to rank 16 (--max-rank 16), fp16",
    exported=True,
    max_rank=16,
)
