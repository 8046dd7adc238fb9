"""The evaluation-method registry and the small helpers around it."""

from __future__ import annotations

import pytest

from mta.errors import UnknownNameError
from mta.evaluation.methods import (
    DEFAULT_METHODS,
    METHODS,
    execution_order,
    get_method,
    parse_methods,
    reference_method,
)
from mta.evaluation.methods_baseline import majority_label
from mta.evaluation.statistics import EvaluationError


def test_every_documented_method_is_registered():
    assert set(DEFAULT_METHODS) == {
        "base",
        "task-lora",
        "oppu",
        "mta-fuse",
        "mta",
        "mta-factorwise",
        "stack-only",
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


def test_registry_keys_are_the_method_names_and_defaults_follow_the_table():
    assert all(name == method.name for name, method in METHODS.items())
    ablations = ["mta-int8", "mta-nf4", "mta-attention", "mta-export", "mta-export-r16"]
    assert list(DEFAULT_METHODS) == [m for m in METHODS if m not in ablations]
    assert all(get_method(m).user_tag == "" for m in ablations if m != "mta-attention")
    assert get_method("mta-factorwise").fusion == "factorwise"
    assert get_method("mta").user_tag == get_method("mta-fuse").user_tag  # one fuse, shared


def test_unknown_method_name_in_lookup_lists_the_valid_names():
    with pytest.raises(UnknownNameError, match="valid: base, mta, mta-attention, mta-export"):
        get_method("nope")


def test_classification_only_follows_the_task_labels():
    from mta.tasks import TASKS

    for name, task in TASKS.items():
        methods, skipped = parse_methods("base,user-majority", name)
        assert ("user-majority" in methods) == bool(task.labels)
        assert ("user-majority" in skipped) == (not task.labels)


def test_methods_without_the_model_run_first_then_table_order():
    order = execution_order(["mta", "base", "user-majority", "oppu", "retrieved", "mta-fuse"])
    assert order == ["retrieved", "user-majority", "base", "oppu", "mta-fuse", "mta"]
