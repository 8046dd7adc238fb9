"""The evaluation-method registry and the small helpers around it."""

from __future__ import annotations

import pytest

from mta.errors import UnknownNameError
from mta.evaluation import (
    DEFAULT_METHODS,
    EvaluationError,
    get_method,
    majority_label,
    parse_methods,
    reference_method,
)


def test_every_documented_method_is_registered():
    assert set(DEFAULT_METHODS) == {
        "base",
        "task-lora",
        "oppu",
        "mta-fuse",
        "mta",
        "mta-factorwise",
        "retrieved",
        "user-majority",
    }
    assert get_method("mta").needs_bank and not get_method("oppu").needs_bank
    assert not get_method("retrieved").uses_model


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(UnknownNameError, match="valid: base, mta"):
        parse_methods("base,nope", "movie_tagging")


def test_classification_only_methods_are_skipped_for_generation_tasks():
    methods, skipped = parse_methods("base,user-majority,mta", "news_headline")
    assert methods == ["base", "mta"] and skipped == ["user-majority"]
    methods, skipped = parse_methods("base,user-majority", "citation")
    assert methods == ["base", "user-majority"] and skipped == []


def test_default_is_every_method_and_order_is_kept():
    assert parse_methods(None, "product_rating")[0] == list(DEFAULT_METHODS)
    assert parse_methods(" oppu , base ", "citation")[0] == ["oppu", "base"]


def test_empty_duplicate_and_inapplicable_lists_are_rejected():
    with pytest.raises(EvaluationError, match="no evaluation methods"):
        parse_methods(" , ", "citation")
    with pytest.raises(EvaluationError, match="twice"):
        parse_methods("base,base", "citation")
    with pytest.raises(EvaluationError, match="applies"):
        parse_methods("user-majority", "scholarly_title")


def test_reference_prefers_mta_then_base():
    assert reference_method(["base", "mta", "oppu"]) == "mta"
    assert reference_method(["oppu", "base"]) == "base"
    assert reference_method(["oppu", "retrieved"]) == "oppu"


def test_majority_label_breaks_ties_by_first_seen():
    assert majority_label(["a", "b", "b", "a", "c"]) == "a"
    assert majority_label(["c", "b", "b"]) == "b"
    with pytest.raises(EvaluationError):
        majority_label([])
