"""Evaluation methods registered by name: every caller looks a method up here.

One class per method (`methods_baseline`, `methods_bank`), each listed once in
``METHODS``; the runner calls ``method.predict(run)`` and never branches on a name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mta.errors import unknown_name
from mta.evaluation.method import EvalMethod
from mta.evaluation.methods_bank import (
    MTA,
    MTA_ATTENTION,
    MTA_EXPORT,
    MTA_EXPORT_R16,
    MTA_FACTORWISE,
    MTA_FUSE,
    MTA_INT8,
    MTA_NF4,
)
from mta.evaluation.methods_baseline import (
    BaseModelMethod,
    OppuMethod,
    RetrievedMethod,
    StackOnlyMethod,
    TaskLoraMethod,
    UserMajorityMethod,
)
from mta.evaluation.options import DEFAULT_METHODS
from mta.evaluation.statistics import EvaluationError

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "execution_order",
    "get_method",
    "parse_methods",
    "reference_method",
]


def _register(methods: Iterable[EvalMethod]) -> dict[str, EvalMethod]:
    """The registry dict; a name registered twice is a programming error."""
    out: dict[str, EvalMethod] = {}
    for method in methods:
        if method.name in out:
            raise KeyError(f"evaluation method {method.name!r} registered twice")
        out[method.name] = method
    return out


# Table order: the columns of every result, and the order the defaults list them in.
METHODS: dict[str, EvalMethod] = _register(
    (
        BaseModelMethod(),
        TaskLoraMethod(),
        OppuMethod(),
        MTA_FUSE,
        MTA,
        MTA_FACTORWISE,
        StackOnlyMethod(),
        RetrievedMethod(),
        UserMajorityMethod(),
        MTA_INT8,
        MTA_NF4,
        MTA_ATTENTION,
        MTA_EXPORT,
        MTA_EXPORT_R16,
    )
)
_unregistered = [name for name in DEFAULT_METHODS if name not in METHODS]
if _unregistered:
    raise KeyError(f"default evaluation methods {_unregistered} are not registered")


def get_method(name: str) -> EvalMethod:
    """Look up an evaluation method by name (UnknownNameError lists the valid names)."""
    try:
        return METHODS[name]
    except KeyError:
        raise unknown_name("evaluation method", name, list(METHODS)) from None


def parse_methods(spec: str | Sequence[str] | None, task: str) -> tuple[list[str], list[str]]:
    """Turn a comma-separated method list into the methods that apply to a task.

    Args:
        spec: "base,mta,..." or a sequence of names; None means the default methods.
        task: task name; classification-only methods are dropped for a task without
            a closed label set.

    Returns:
        ``(methods, skipped)``: the applicable names in the order given, and the names
        dropped because they do not apply to ``task``.

    Raises:
        UnknownNameError: a name is not a registered method, or the task is unknown.
        EvaluationError: the list is empty or names a method twice.
    """
    from mta.tasks import get_task

    if spec is None:
        names = list(DEFAULT_METHODS)
    elif isinstance(spec, str):
        names = [n.strip() for n in spec.split(",") if n.strip()]
    else:
        names = [n.strip() for n in spec]
    if not names:
        raise EvaluationError("no evaluation methods given")
    if len(set(names)) != len(names):
        raise EvaluationError(f"method listed twice in {','.join(names)!r}")
    has_labels = bool(get_task(task).labels)
    methods, skipped = [], []
    for name in names:
        if get_method(name).classification_only and not has_labels:
            skipped.append(name)
        else:
            methods.append(name)
    if not methods:
        raise EvaluationError(f"none of the methods {','.join(names)!r} applies to task {task!r}")
    return methods, skipped


def reference_method(methods: Sequence[str]) -> str:
    """The method others are compared against: `mta` when evaluated, else `base`, else the first."""
    for name in ("mta", "base"):
        if name in methods:
            return name
    return methods[0]


def execution_order(methods: Sequence[str]) -> list[str]:
    """The order methods run in: those without the model first, then table order.

    The trivial baselines take no time, so a checkpoint holds them from the start; the
    bank-based methods come last, after the baselines that need no bank.
    """
    table = list(METHODS)
    return sorted(methods, key=lambda name: (get_method(name).uses_model, table.index(name)))
