"""The bank of one seed, built from its pool through the registry, and its evaluation users.

The MTA methods go through the same service calls as `mta bank build`, `mta user add`,
`mta user fuse` and `mta user adapt`. Only a test entry's profile is registered: its
query and gold stay out of the registry. Methods that share a ``user_tag`` share the
registered user (`mta-fuse` and `mta` fuse once; `mta` then trains the stack on it).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mta.evaluation.options import BASELINE_RANK, EVAL_USER_PREFIX
from mta.evaluation.protocol import EvalEntry
from mta.evaluation.seed_state import SeedState
from mta.evaluation.statistics import EvaluationError

if TYPE_CHECKING:
    from mta.registry.context import RegistryContext


class PoolBank:
    """A published bank version and the evaluation users registered against it."""

    def __init__(self, ctx: RegistryContext, bank: Any) -> None:
        self.ctx = ctx
        self.bank = bank
        # (entry index, user tag) -> (registry user id, its recipe)
        self._users: dict[tuple[int, str], tuple[str, Any]] = {}

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
            service.add_user(
                self.ctx,
                user_id=user_id,
                task=self.bank.task,
                profile={"profile": entry["profile"]},
                bank_ref=str(self.bank.version),
            )
            # Recorded before fusing, so close() deletes the user even if fusing fails.
            self._users[key] = (user_id, None)
            request = service.FuseRequest(
                top_k=run.options.top_k, method=fusion, weight_rule=run.options.weight_rule
            )
            recipe = service.fuse_user(self.ctx, user_id, request)
            self._users[key] = (user_id, recipe)
        return self._users[key]

    def fused(self, user_id: str) -> Any:
        """The user's fused adapter, rebuilt in memory from their adapter identity."""
        from mta.registry import service

        return service.materialize_fused(self.ctx, service.adapter_identity(self.ctx, user_id))

    def stacked(self, run: SeedState, user_id: str, fused: Any, entry: EvalEntry) -> Any:
        """Train the user's stack on the entry's shots; the fused adapter with it stacked on."""
        from mta.adapter_blob import adapter_from_bytes
        from mta.export import stack_onto
        from mta.registry import service

        request = run.options.stack_request(seed=run.seed, shot_indices=entry.shot_indices)
        stack = service.adapt_user(self.ctx, user_id, request)
        return stack_onto(fused, adapter_from_bytes(self.ctx.store.get_bytes(stack.blob)))

    def close(self) -> None:
        """Delete every user registered for the evaluation."""
        from mta.registry import service

        for user_id, _recipe in self._users.values():
            service.delete_user(self.ctx, user_id)
        self._users.clear()
