"""The bank of one seed, built from its pool through the registry, and its evaluation users.

The MTA methods go through the same service calls as `mta bank build`, `mta user add`,
`mta user fuse` and `mta user adapt`. Only a test entry's profile is registered: its
query and gold stay out of the registry. Methods that share a ``user_tag`` share the
registered user (`mta-fuse` and `mta` fuse once; `mta` then trains the stack on it).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mta.evaluation.options import BASELINE_RANK, EVAL_USER_PREFIX
from mta.evaluation.seed_state import SeedState
from mta.evaluation.statistics import EvaluationError

if TYPE_CHECKING:
    from mta.registry.context import RegistryContext


@dataclasses.dataclass(frozen=True)
class StackVariant:
    """How an MTA method turns the user's trained stack into the adapter it scores.

    Attributes:
        stack_format: re-store the stack in this format (`mta.stack_formats`) and load it
            back; None scores the stack as `adapt_user` stored it (`--stack-dtype`).
            Quantized blobs are encoded from the fp16-rounded factors, so this equals the
            blob `mta user adapt --dtype FORMAT` stores for the same training.
        modules: train the stack on these modules (`--stack-modules` syntax) instead of
            the run's; such a variant needs its own user tag.
        exported: score the adapter `mta publish` serves (fused + stack, one rank, fp16)
            instead of the in-memory sum.
        max_rank: with ``exported``, compress to this rank as `--max-rank` does.
    """

    stack_format: str | None = None
    modules: str | None = None
    exported: bool = False
    max_rank: int | None = None


class PoolBank:
    """A published bank version and the evaluation users registered against it."""

    def __init__(self, ctx: RegistryContext, bank: Any) -> None:
        self.ctx = ctx
        self.bank = bank
        # (entry index, user tag) -> (registry user id, its recipe)
        self._users: dict[tuple[int, str], tuple[str, Any]] = {}
        # (entry index, user tag) -> the stack row trained for it (variants of `mta` reuse it)
        self._stacks: dict[tuple[int, str], Any] = {}

    @classmethod
    def build(cls, run: SeedState) -> PoolBank:
        """Publish a bank built from the pool users (one entry each) through the registry."""
        from mta.registry.service import build_bank

        options = run.options
        eligible = sum(len(u["profile"]) >= options.min_history for u in run.split.pool)
        anchors = options.anchors
        if anchors > eligible:
            if eligible == 0:
                raise EvaluationError(
                    f"no pool user has --min-history {options.min_history} profile items"
                )
            note = (
                f"seed {run.seed}: --anchors {anchors} lowered to {eligible} (eligible pool users)"
            )
            run.say(note)
            run.notes.append(note)
            anchors = eligible
        with tempfile.TemporaryDirectory(prefix="mta-eval-pool-") as tmp:
            pool_path = Path(tmp) / "pool.json"
            pool_path.write_text(json.dumps(run.split.pool, ensure_ascii=False))
            with run.timer("bank"):
                bank = build_bank(
                    run.ctx,
                    task=run.task.name,
                    data_path=pool_path,
                    anchors=anchors,
                    epochs=options.epochs,
                    rank=BASELINE_RANK,
                    anchor_data=options.anchor_data,
                    min_history=options.min_history,
                    lr=options.lr,
                    base_model=options.base_model,
                    embedder=options.embedder,
                    seed=run.seed,
                    max_steps=options.max_steps,
                    progress=lambda stage, done, total: run.report(f"bank {stage}", done, total),
                )
        return cls(run.ctx, bank)

    def user(self, run: SeedState, index: int, tag: str, fusion: str) -> tuple[str, Any]:
        """The registry user of entry ``index`` for ``tag``: added and fused on first use."""
        from mta.registry import service

        key = (index, tag)
        if key not in self._users:
            entry = run.entries[index].entry
            user_id = f"{EVAL_USER_PREFIX}-s{run.seed}-{entry['user_id']}{tag}"
            self._add_user(run, user_id, entry)
            # Recorded before fusing, so close() deletes the user even if fusing fails.
            self._users[key] = (user_id, None)
            request = service.FuseRequest(
                top_k=run.options.top_k, method=fusion, weight_rule=run.options.weight_rule
            )
            recipe = service.fuse_user(self.ctx, user_id, request)
            self._users[key] = (user_id, recipe)
        return self._users[key]

    def _add_user(self, run: SeedState, user_id: str, entry: dict) -> None:
        """Register the entry's user; with --resume, replace one an interrupted run left."""
        from mta.registry import service
        from mta.registry.errors import AlreadyExistsError

        def add() -> None:
            service.add_user(
                self.ctx,
                user_id=user_id,
                task=self.bank.task,
                profile={"profile": entry["profile"]},
                bank_ref=str(self.bank.version),
            )

        try:
            add()
        except AlreadyExistsError:
            if not run.options.resume:
                raise
            # A killed run never reached close(); its user of this seed and entry is ours.
            service.delete_user(self.ctx, user_id)
            add()

    def fused(self, user_id: str) -> Any:
        """The user's fused adapter, rebuilt in memory from their adapter identity."""
        from mta.registry import service

        return service.materialize_fused(self.ctx, service.adapter_identity(self.ctx, user_id))

    def stacked(
        self, run: SeedState, index: int, tag: str, fused: Any, variant: StackVariant
    ) -> Any:
        """The fused adapter of entry ``index`` with its stack on, as ``variant`` says.

        The stack is trained once per (entry, user tag) through `adapt_user`; variants that
        share the tag (`mta-int8`, `mta-export`, ...) store-and-load or export that same
        stack instead of training their own.
        """
        from mta.adapter_blob import adapter_from_bytes, adapter_to_bytes
        from mta.export import export_adapter, stack_onto

        stack = adapter_from_bytes(self.ctx.store.get_bytes(self._stack(run, index, tag, variant)))
        if variant.stack_format is not None:
            stack = adapter_from_bytes(adapter_to_bytes(stack, dtype=variant.stack_format))
        if not variant.exported:
            return stack_onto(fused, stack)
        exported = export_adapter(fused, stack, max_rank=variant.max_rank)
        # `mta publish` and `mta user export` write fp16 by default: score those tensors.
        return adapter_from_bytes(adapter_to_bytes(exported, dtype="fp16"))

    def _stack(self, run: SeedState, index: int, tag: str, variant: StackVariant) -> str:
        """The blob digest of the entry's stack for ``tag``, trained on first use."""
        from mta.registry import service

        key = (index, tag)
        if key not in self._stacks:
            entry = run.entries[index]
            request = run.options.stack_request(seed=run.seed, shot_indices=entry.shot_indices)
            if variant.modules is not None:
                request = dataclasses.replace(request, modules=variant.modules)
            user_id, _recipe = self._users[key]
            self._stacks[key] = service.adapt_user(self.ctx, user_id, request)
        return self._stacks[key].blob

    def close(self) -> None:
        """Delete every user registered for the evaluation."""
        from mta.registry import service

        for user_id, _recipe in self._users.values():
            service.delete_user(self.ctx, user_id)
        self._users.clear()
        self._stacks.clear()
