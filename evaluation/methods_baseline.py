"""The baselines: the base model, a task LoRA, OPPU, and the two trivial label copiers."""

from __future__ import annotations

from collections.abc import Sequence

from mta.evaluation.method import EvalMethod
from mta.evaluation.options import BASELINE_RANK, HISTORY_K
from mta.evaluation.protocol import shot_examples
from mta.evaluation.seed_run import SeedRun
from mta.evaluation.statistics import EvaluationError


class BaseModelMethod(EvalMethod):
    """The base model with the same retrieval prompt, no adapter."""

    name = "base"
    summary = "the base model with the same retrieval prompt, no adapter"

    def predict(self, run: SeedRun) -> list[str]:
        """Generate with the bare base model."""
        with run.timer(self.name):
            return run.model().predict(run.items, progress=run.progress(self.name))


class TaskLoraMethod(EvalMethod):
    """One LoRA trained on every pool user's leave-one-out examples."""

    name = "task-lora"
    summary = "one rank-8 LoRA trained on the whole anchor pool"
    trains = "pool"

    def predict(self, run: SeedRun) -> list[str]:
        """Train on the pool, then generate with the LoRA merged in memory."""
        from mta.tasks import profile_examples

        with run.timer(self.name):
            examples = [
                ex
                for user in run.split.pool
                for ex in profile_examples(run.task, user["profile"], k=HISTORY_K)
            ]
            run.report(f"{self.name} train", 0, 1)
            adapter = run.model().train(
                examples,
                rank=BASELINE_RANK,
                epochs=run.options.epochs,
                lr=run.options.lr,
                seed=run.seed,
            )
            run.report(f"{self.name} train", 1, 1)
            return run.model().predict(run.items, adapter, progress=run.progress(self.name))


class OppuMethod(EvalMethod):
    """One LoRA per test user, trained from scratch on its shots (the paper's OPPU)."""

    name = "oppu"
    summary = "one rank-8 LoRA per test user, from scratch on its shots"
    trains = "per-user"

    def predict(self, run: SeedRun) -> list[str]:
        """Train and generate entry by entry."""
        out: list[str] = []
        with run.timer(self.name):
            for n, e in enumerate(run.entries):
                examples = shot_examples(run.task, e.entry["profile"], e.shot_indices, HISTORY_K)
                adapter = run.model().train(
                    examples,
                    rank=BASELINE_RANK,
                    epochs=run.options.user_epochs,
                    lr=run.options.user_lr,
                    seed=run.seed,
                )
                out.extend(run.model().predict(e.items, adapter))
                run.report(self.name, n + 1, len(run.entries))
        return out


class StackOnlyMethod(EvalMethod):
    """The MTA stack without the merge: the same stack, shots and training on the base alone.

    Rank `--stack-rank`, `--user-epochs`, `--user-lr`, `--stack-modules`, the seed, the
    leave-one-out examples and the storage round trip (`--stack-dtype`) are the `mta`
    method's; only the frozen fused anchors underneath are missing. Against `mta` it
    measures what the merge half of Merge-then-Adapt contributes.
    """

    name = "stack-only"
    summary = "the MTA stack trained on the base model alone (no fused anchors)"
    trains = "per-user"

    def predict(self, run: SeedRun) -> list[str]:
        """Train each entry's stack on the base model, store-and-load it, generate."""
        from mta.adapter_blob import adapter_from_bytes, adapter_to_bytes
        from mta.base_model import DEFAULT_TARGET_MODULES

        options = run.options
        out: list[str] = []
        with run.timer(self.name):
            for n, e in enumerate(run.entries):
                request = options.stack_request(seed=run.seed, shot_indices=e.shot_indices)
                examples = shot_examples(run.task, e.entry["profile"], e.shot_indices, HISTORY_K)
                stack = run.model().train(
                    examples,
                    rank=request.rank,
                    epochs=request.epochs,
                    lr=request.lr,
                    seed=request.seed,
                    target_modules=request.stack_modules(DEFAULT_TARGET_MODULES),
                )
                stored = adapter_from_bytes(adapter_to_bytes(stack, dtype=request.dtype))
                out.extend(run.model().predict(e.items, stored))
                run.report(self.name, n + 1, len(run.entries))
        return out


class RetrievedMethod(EvalMethod):
    """Copy the label or output of the BM25 top-1 history item."""

    name = "retrieved"
    summary = "label/output of the BM25 top-1 history item"
    uses_model = False

    def predict(self, run: SeedRun) -> list[str]:
        """The answer the retrieved history item gives."""
        return [run.task.answer_from_history(it.query_input, it.history) for it in run.items]


class UserMajorityMethod(EvalMethod):
    """The user's most frequent label among its shots, for every item of the user."""

    name = "user-majority"
    summary = "the user's most frequent label among its shots"
    uses_model = False
    classification_only = True

    def predict(self, run: SeedRun) -> list[str]:
        """One label per entry, repeated over its items."""
        out: list[str] = []
        for e in run.entries:
            prepared = run.task.prepare_profile(e.entry["profile"])
            label = majority_label([run.task.item_target(prepared[i]) for i in e.shot_indices])
            out.extend([label] * len(e.items))
        return out


def majority_label(labels: Sequence[str]) -> str:
    """The most frequent label; ties go to the label seen first (deterministic)."""
    if not labels:
        raise EvaluationError("majority of an empty label list")
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    best = max(counts.values())
    return next(label for label in labels if counts[label] == best)
