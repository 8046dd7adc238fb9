"""Everything `mta eval` can be told, with each default written once (the CLI reads them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mta.stack_formats import DEFAULT_STACK_FORMAT

# The methods compared when --methods is not given: every registered one in table order but
# the ablations of the stack (`mta-int8`, `mta-nf4`, `mta-attention`, `mta-export*`), which
# `--methods` names (`mta.evaluation.methods` checks at import that each is registered).
DEFAULT_METHODS = (
    "base",
    "task-lora",
    "oppu",
    "mta-fuse",
    "mta",
    "mta-factorwise",
    "stack-only",
    "retrieved",
    "user-majority",
)
# Every seed of a run builds a bank, whose k-means takes 32-bit seeds.
MAX_EVAL_SEED = 2**32 - 1
# Baselines trained from scratch use the meta-LoRA rank, as the paper's OPPU.
BASELINE_RANK = 8
# History items retrieved into every prompt (the paper's top-1), as the registry trains with.
HISTORY_K = 1
# Registry users the evaluation creates are called <prefix>-s<seed>-<entry user id>.
EVAL_USER_PREFIX = "eval"
# How a model method turns its output into a prediction (`EvalOptions.decode`).
DECODE_MODES = ("generate", "rank")


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how; `DEFAULTS` holds the values a flag left out gets."""

    task: str
    data: Path | None = None
    # Every entry of this file is a test user and --data is the pool (no split).
    test_data: Path | None = None
    methods: str = ",".join(DEFAULT_METHODS)
    anchors: int = 4
    top_k: int = 2
    shots: int = 5
    stack_rank: int = 1
    # How the MTA stack is stored and where it trains (`mta user adapt --dtype/--stack-modules`).
    stack_dtype: str = DEFAULT_STACK_FORMAT
    stack_modules: str = "all"
    fusion: str = "cat"
    weight_rule: str = "proportional"
    seed: int = 0
    seeds: int = 1
    limit: int | None = None
    test_fraction: float = 0.5
    epochs: int = 1
    lr: float = 1e-3  # anchors and the task LoRA: one epoch at 2e-4 barely moves them
    user_epochs: int = 3
    user_lr: float = 1e-3
    max_steps: int | None = None
    min_history: int = 8
    # Cluster anchors (each trained on its k-means cluster's pooled history) beat the paper's
    # single-user anchors on LaMP movie tagging (docs/results.md); "user" is kept for parity.
    anchor_data: str = "cluster"
    base_model: str | None = None
    device: str | None = None  # where models run (None: MTA_DEVICE, else auto)
    embedder: str | None = None
    max_new_tokens: int | None = None
    batch_size: int = 8
    n_resamples: int = 1000
    # Resample items, not real users: narrower intervals that ignore the items a real
    # user's entries share (the default resamples real users; see `mta.evaluation.summary`).
    item_bootstrap: bool = False
    # "generate" parses a greedy generation (the paper); "rank" answers the label of the
    # task's set with the highest length-normalized log-likelihood (classification only).
    decode: str = "generate"
    # Written after every finished method: predictions so far, for runs that may not finish.
    checkpoint: Path | None = None
    # Reuse the methods the checkpoint finished (same task, seed, items and options).
    resume: bool = False

    def as_json(self) -> dict[str, Any]:
        """Every option as a JSON value (paths as strings): the result's and checkpoint's record."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def validate(self) -> None:
        """Raise EvaluationError with a one-line message for an out-of-range option."""
        # Imported here: the CLI imports this module, and `mta --help` must not load numpy.
        from mta.evaluation.statistics import EvaluationError

        positive = {
            "anchors": self.anchors,
            "top-k": self.top_k,
            "shots": self.shots,
            "stack-rank": self.stack_rank,
            "seeds": self.seeds,
            "epochs": self.epochs,
            "user-epochs": self.user_epochs,
            "batch-size": self.batch_size,
            "resamples": self.n_resamples,
        }
        for name, value in positive.items():
            if value < 1:
                raise EvaluationError(f"--{name} must be at least 1, got {value}")
        if self.limit is not None and self.limit < 1:
            raise EvaluationError(f"--limit must be at least 1, got {self.limit}")
        if self.max_steps is not None and self.max_steps < 1:
            raise EvaluationError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.decode not in DECODE_MODES:
            raise EvaluationError(
                f"unknown --decode {self.decode!r}; valid: {', '.join(DECODE_MODES)}"
            )
        last_seed = self.seed + self.seeds - 1
        if self.seed < 0 or last_seed > MAX_EVAL_SEED:
            raise EvaluationError(
                f"--seed must be between 0 and {MAX_EVAL_SEED - self.seeds + 1} with --seeds "
                f"{self.seeds} (k-means takes 32-bit seeds), got {self.seed}"
            )
        self._check_stack(EvaluationError)
        if self.resume and (self.checkpoint is None or self.seeds != 1):
            raise EvaluationError("--resume needs --checkpoint and one seed (--seeds 1)")
        if not 0.0 < self.test_fraction < 1.0:
            raise EvaluationError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")

    def stack_request(self, *, seed: int, shot_indices: Sequence[int]) -> Any:
        """The registry's training request for a test user's stack (the `mta` method)."""
        from mta.registry.requests import AdaptRequest

        return AdaptRequest(
            shots=len(shot_indices),
            rank=self.stack_rank,
            epochs=self.user_epochs,
            lr=self.user_lr,
            seed=seed,
            dtype=self.stack_dtype,
            max_steps=self.max_steps,
            shot_indices=tuple(shot_indices),
            modules=self.stack_modules,
        )

    def _check_stack(self, error: type[Exception]) -> None:
        """The stack's storage format and module set, as `mta user adapt` checks them."""
        from mta.registry.errors import InvalidInputError

        try:
            self.stack_request(seed=0, shot_indices=range(self.shots)).validate()
        except InvalidInputError as exc:
            raise error(str(exc).replace("stack dtype", "--stack-dtype")) from None


# The defaults of every option; the task has none (the CLI requires it).
DEFAULTS = EvalOptions(task="")
