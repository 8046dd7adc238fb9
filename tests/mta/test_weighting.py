"""Weight rules: proportional (clipped cosine) and softmax with temperature."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.errors import UnknownNameError
from mta.weighting import WEIGHT_RULES, compute_weights, get_weight_rule

scores_lists = st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=8)


def test_proportional_is_the_default_and_divides_by_the_sum() -> None:
    assert compute_weights([0.6, 0.2]) == pytest.approx([0.75, 0.25])


def test_proportional_clips_negative_scores() -> None:
    assert compute_weights([0.5, -0.3, 0.5]) == pytest.approx([0.5, 0.0, 0.5])


def test_proportional_falls_back_to_uniform_when_no_score_is_positive() -> None:
    assert compute_weights([-0.2, 0.0, -0.9]) == pytest.approx([1 / 3] * 3)


def test_softmax_matches_its_formula() -> None:
    scores, t = [0.9, 0.5, 0.1], 0.2
    exps = [math.exp(s / t) for s in scores]
    expected = [e / sum(exps) for e in exps]
    assert compute_weights(scores, "softmax", temperature=t) == pytest.approx(expected)


def test_softmax_temperature_sharpens_and_flattens() -> None:
    cold = compute_weights([0.9, 0.1], "softmax", temperature=0.01)
    hot = compute_weights([0.9, 0.1], "softmax", temperature=100.0)
    assert cold[0] == pytest.approx(1.0) and cold[1] < 1e-30
    assert hot == pytest.approx([0.5, 0.5], abs=1e-2)


@settings(max_examples=50, deadline=None)
@given(scores_lists, st.sampled_from(sorted(WEIGHT_RULES)), st.floats(0.01, 10.0))
def test_weights_are_a_distribution_that_preserves_order(scores, rule, temperature) -> None:
    weights = compute_weights(scores, rule, temperature=temperature)
    assert len(weights) == len(scores)
    assert all(w >= 0 for w in weights)
    assert sum(weights) == pytest.approx(1.0)
    for i in range(len(scores)):
        for j in range(len(scores)):
            if scores[i] > scores[j]:
                assert weights[i] >= weights[j]  # higher similarity never gets less weight


@pytest.mark.parametrize(
    ("scores", "kwargs", "message"),
    [
        ([], {}, "at least one score"),
        ([0.5, math.nan], {}, "finite"),
        ([0.5, math.inf], {"rule": "softmax"}, "finite"),
        ([0.5], {"rule": "softmax", "temperature": 0.0}, "temperature"),
        ([0.5], {"rule": "softmax", "temperature": -1.0}, "temperature"),
        ([0.5], {"rule": "softmax", "temperature": math.nan}, "temperature"),
    ],
)
def test_bad_inputs_are_refused(scores, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        compute_weights(scores, **kwargs)


def test_unknown_rule_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="valid: proportional, softmax"):
        compute_weights([0.5], "rank")
    assert all(get_weight_rule(name).name == name for name in WEIGHT_RULES)
