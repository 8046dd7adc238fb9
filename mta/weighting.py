"""Weight rules: anchor similarity scores -> fusion weights, registered by name."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from mta.errors import unknown_name

DEFAULT_WEIGHT_RULE = "proportional"


class WeightRule(Protocol):
    """A named map from similarity scores to non-negative weights summing to 1."""

    name: str

    def weights(self, scores: Sequence[float], *, temperature: float) -> list[float]:
        """The weights for ``scores`` (validated: non-empty, finite)."""
        ...


class ProportionalRule:
    """``w_i = max(sim_i, 0) / Σ_j max(sim_j, 0)``; uniform when no score is positive.

    The uniform fallback keeps fusion defined for a user unlike every anchor
    (all cosine similarities ≤ 0): no anchor is preferred, so all count equally.
    ``temperature`` is ignored.
    """

    name = "proportional"

    def weights(self, scores: Sequence[float], *, temperature: float) -> list[float]:
        """Proportional weights (see the class docstring)."""
        clipped = [max(s, 0.0) for s in scores]
        total = sum(clipped)
        if total <= 0.0:
            return [1.0 / len(scores)] * len(scores)
        return [c / total for c in clipped]


class SoftmaxRule:
    """``w_i = exp(sim_i / T) / Σ_j exp(sim_j / T)`` with temperature ``T > 0``."""

    name = "softmax"

    def weights(self, scores: Sequence[float], *, temperature: float) -> list[float]:
        """Softmax weights (see the class docstring)."""
        top = max(scores)
        # Shifting by the max keeps exp() from overflowing at small temperatures.
        exps = [math.exp((s - top) / temperature) for s in scores]
        total = sum(exps)
        return [e / total for e in exps]


WEIGHT_RULES: dict[str, WeightRule] = {
    rule.name: rule for rule in (ProportionalRule(), SoftmaxRule())
}


def get_weight_rule(name: str) -> WeightRule:
    """The weight rule called ``name``; UnknownNameError lists the valid names."""
    try:
        return WEIGHT_RULES[name]
    except KeyError:
        raise unknown_name("weight rule", name, list(WEIGHT_RULES)) from None


def compute_weights(
    scores: Sequence[float], rule: str = DEFAULT_WEIGHT_RULE, *, temperature: float = 1.0
) -> list[float]:
    """Turn similarity scores (e.g. cosine of the top-k anchors) into fusion weights.

    Args:
        scores: One score per anchor, at least one, all finite.
        rule: "proportional" (default) or "softmax".
        temperature: Softmax temperature, > 0 (ignored by "proportional").

    Returns:
        Non-negative weights summing to 1, in the order of ``scores``.

    Raises:
        UnknownNameError: unknown rule.
        ValueError: no scores, a non-finite score, or a temperature that is not > 0.
    """
    weight_rule = get_weight_rule(rule)
    values = [float(s) for s in scores]
    if not values:
        raise ValueError("need at least one score to compute weights")
    if not all(math.isfinite(s) for s in values):
        raise ValueError(f"scores must be finite, got {values}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    return weight_rule.weights(values, temperature=float(temperature))
