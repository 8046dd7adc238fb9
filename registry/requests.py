"""The two requests a user's personalization takes: how to fuse, and how to train the stack.

Each is one frozen value from the flag (CLI), the body (HTTP), the bulk job and the Ray
actor down to the service that runs it, validated once by `validate()`. A stored stack's
request is read back with `AdaptRequest.of_stack`, so "was this user already trained as
asked?" is one comparison (`AdaptRequest.matches`), and the stored `train_config` is what
`AdaptRequest.record` writes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mta.registry.entities import Stack
from mta.registry.errors import InvalidInputError
from mta.stack_formats import DEFAULT_STACK_FORMAT, STACK_FORMATS

# torch.manual_seed and the stored JSON take 64-bit integers; a larger seed is a typo.
MAX_SEED = 2**63 - 1
# Named subsets of a bank's target modules a stack may train (or a comma-separated list).
STACK_MODULE_SETS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
DEFAULT_TOP_K = 2


def shot_indices(num_items: int, shots: int, seed: int) -> list[int]:
    """Which profile items are a user's shots: a seeded sample of `shots`, in profile order.

    `random.Random(seed).sample` over the item positions, sorted; all items when
    `shots >= num_items`. The same seed picks the same shots on every machine.
    """
    if shots < 1:
        raise InvalidInputError(f"shots must be at least 1, got {shots}")
    if shots >= num_items:
        return list(range(num_items))
    return sorted(random.Random(seed).sample(range(num_items), shots))


@dataclass(frozen=True)
class AdaptRequest:
    """How a user's stack is trained: shots, the stack's TrainConfig fields, its stored dtype.

    `shot_indices` names the profile items to train on (the evaluation passes the ones
    its baselines use); None picks `shot_indices(n, shots, seed)`.
    """

    shots: int = 5
    rank: int = 1
    epochs: int = 3
    lr: float = 1e-3
    seed: int = 0
    dtype: str = DEFAULT_STACK_FORMAT
    batch_size: int = 4
    max_steps: int | None = None
    shot_indices: tuple[int, ...] | None = None
    modules: str = "all"  # "all", "attention", "mlp" or a comma-separated list of leaf names

    def validate(self) -> AdaptRequest:
        """Return self, or raise InvalidInputError naming the first bad field."""
        _at_least("shots", self.shots, 1)
        _at_least("rank", self.rank, 1)
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        if self.max_steps is not None:
            _at_least("max_steps", self.max_steps, 1)
        if not 0 <= self.seed <= MAX_SEED:
            raise InvalidInputError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if not (self.lr > 0 and self.lr < float("inf")):
            raise InvalidInputError(f"lr must be a positive number, got {self.lr}")
        if self.dtype not in STACK_FORMATS:
            raise InvalidInputError(
                f"unknown stack dtype {self.dtype!r}; valid: {', '.join(STACK_FORMATS)}"
            )
        _module_names(self.modules)
        if self.shot_indices is not None:
            chosen = list(self.shot_indices)
            if len(chosen) != self.shots or chosen != sorted(set(chosen)) or min(chosen) < 0:
                raise InvalidInputError(
                    f"shot_indices must be {self.shots} distinct ascending item positions, "
                    f"got {chosen}"
                )
        return self

    def choose_shots(self, num_items: int) -> list[int]:
        """The profile positions to train on, for a profile of `num_items` items."""
        if self.shot_indices is None:
            return shot_indices(num_items, self.shots, self.seed)
        if self.shot_indices and max(self.shot_indices) >= num_items:
            raise InvalidInputError(
                f"shot_indices {list(self.shot_indices)} exceed the profile's {num_items} items"
            )
        return list(self.shot_indices)

    def stack_modules(self, bank_modules: Sequence[str]) -> list[str]:
        """The bank target modules this stack trains, in the bank's order.

        Raises:
            InvalidInputError: a named module the bank does not target, or none left.
        """
        names = _module_names(self.modules)
        if names is None:
            return list(bank_modules)
        unknown = [n for n in names if n not in bank_modules]
        if unknown and self.modules not in STACK_MODULE_SETS:
            raise InvalidInputError(
                f"stack modules {', '.join(unknown)} are not targets of the bank "
                f"({', '.join(bank_modules)})"
            )
        chosen = [m for m in bank_modules if m in names]
        if not chosen:
            raise InvalidInputError(f"the bank targets none of the stack modules {self.modules!r}")
        return chosen

    def train_config(self, target_modules: Sequence[str]) -> Any:
        """The method core's TrainConfig for this request on a bank's target modules."""
        from mta.training import TrainConfig

        config = TrainConfig(
            rank=self.rank,
            epochs=self.epochs,
            lr=self.lr,
            seed=self.seed,
            batch_size=self.batch_size,
            target_modules=self.stack_modules(target_modules),
            max_steps=self.max_steps,
        )
        config.validate()
        return config

    def record(self, config: Any, chosen: list[int], examples: int, losses: list[float]) -> dict:
        """The stack's stored `train_config`: what trained it, and how the run went."""
        return {
            **dict(vars(config)),
            "shots": self.shots,
            "shot_indices": list(chosen),
            "stack_modules": self.modules,
            "examples": examples,
            "steps": len(losses),
            "losses": [float(x) for x in losses],
        }

    @classmethod
    def of_stack(cls, stack: Stack) -> AdaptRequest:
        """The request a stored stack was trained with (its row and `train_config`)."""
        config = stack.train_config or {}
        chosen = config.get("shot_indices")
        known = {f.name for f in fields(cls)} - {"rank", "dtype", "shot_indices", "modules"}
        values = {name: config.get(name) for name in known}
        values["modules"] = config.get("stack_modules", "all")  # older stacks trained all
        return cls(
            **values,
            rank=stack.rank,
            dtype=stack.dtype,
            shot_indices=tuple(chosen) if chosen is not None else None,
        )

    def matches(self, stack: Stack) -> bool:
        """Whether `stack` was trained exactly as this request asks (a bulk job skips it).

        The shots compare by position only when this request names them.
        """
        stored = AdaptRequest.of_stack(stack)
        if self.shot_indices is None:
            stored = replace(stored, shot_indices=None)
        return stored == self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (job parameters, logs)."""
        data = asdict(self)
        if self.shot_indices is not None:
            data["shot_indices"] = list(self.shot_indices)
        return data


@dataclass(frozen=True)
class FuseRequest:
    """How a user's recipe is made: anchors to retrieve, weights, fusion method, bank."""

    top_k: int = DEFAULT_TOP_K
    method: str = "cat"
    weight_rule: str = "proportional"
    temperature: float = 1.0
    rank: int | None = None  # target rank for "svd"
    bank_ref: str | None = None  # fuse against this version/alias instead of the pinned one

    def validate(self) -> FuseRequest:
        """Return self, or raise (InvalidInputError, or UnknownNameError for a bad name)."""
        from mta.fusion import get_fusion
        from mta.weighting import get_weight_rule

        get_fusion(self.method)
        get_weight_rule(self.weight_rule)
        _at_least("top_k", self.top_k, 1)
        if self.rank is not None:
            _at_least("rank", self.rank, 1)
        return self

    def on_bank(self, bank_ref: str) -> FuseRequest:
        """The same request against another bank version (what `--stale` re-fuses onto)."""
        return replace(self, bank_ref=bank_ref)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        return asdict(self)


def _module_names(spec: str) -> tuple[str, ...] | None:
    """The leaf names a `modules` spec names; None for "all" (InvalidInputError if empty)."""
    if spec == "all":
        return None
    if spec in STACK_MODULE_SETS:
        return STACK_MODULE_SETS[spec]
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    if not names:
        choices = ", ".join(["all", *STACK_MODULE_SETS])
        raise InvalidInputError(f"stack modules: give {choices} or a list, got {spec!r}")
    return names


def _at_least(name: str, value: int, low: int) -> None:
    """InvalidInputError unless `value` is an int of at least `low`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidInputError(f"{name} must be at least {low}, got {value!r}")
