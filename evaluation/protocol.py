"""The LaMP protocol: who is in the pool and who is tested, and which items are scored.

Users are split by *real* user (LaMP entries of one person share profile items), so no
person is on both sides. Pool users give one entry each (anchor candidates); test users
give every entry. Scored items are each test entry's query and, when ``shots`` is below
the profile length, the profile items not used as shots (their history retrieved from
the user's other items).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mta.evaluation.statistics import EvaluationError
from mta.evaluation.summary import ScoredItem


@dataclass
class Split:
    """One seed's split of the users into an anchor pool and test entries."""

    seed: int
    pool: list[dict]  # one entry per real pool user (anchor candidates)
    test: list[dict]  # every entry of the test users, interleaved across users, capped
    group_of: dict[str, str]  # test entry id -> real-user label
    n_pool_groups: int
    n_test_groups: int


def split_users(
    users: Sequence[dict], *, seed: int, test_fraction: float, limit: int | None
) -> Split:
    """Split by real user (seeded): pool users give one entry each, test users all entries.

    Args:
        users: per-user records (entries).
        seed: shuffle seed.
        test_fraction: share of real users held out for testing.
        limit: cap on test entries; picked round-robin across test users so a cap keeps
            as many distinct real users as possible.

    Returns:
        The split.

    Raises:
        EvaluationError: fewer than two real users.
    """
    from mta.lamp_data import group_real_users

    groups = group_real_users(users)
    if len(groups) < 2:
        raise EvaluationError(
            f"need at least 2 real users to split into pool and test, found {len(groups)}"
        )
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n_test = min(len(groups) - 1, max(1, round(len(groups) * test_fraction)))
    test_groups = [groups[g] for g in order[:n_test]]
    pool_groups = [groups[g] for g in order[n_test:]]
    pool = [users[g[0]] for g in pool_groups]
    test, group_of = _interleave(users, test_groups, limit)
    return Split(seed, pool, test, group_of, len(pool_groups), len(test_groups))


def split_given(
    pool_users: Sequence[dict], test_users: Sequence[dict], *, seed: int, limit: int | None
) -> Split:
    """The split of --test-data: every real user of ``test_users`` is tested, none split off.

    The pool gives one entry per real user, as in `split_users`; the caller has checked
    that no real user is in both files (`mta.evaluation.data.load_test_users`).
    """
    from mta.lamp_data import group_real_users

    pool_groups = group_real_users(pool_users)
    test_groups = group_real_users(test_users)
    if not pool_groups or not test_groups:
        raise EvaluationError("--data and --test-data each need at least one user")
    pool = [pool_users[g[0]] for g in pool_groups]
    test, group_of = _interleave(test_users, test_groups, limit)
    return Split(seed, pool, test, group_of, len(pool_groups), len(test_groups))


def _interleave(
    users: Sequence[dict], groups: Sequence[Sequence[int]], limit: int | None
) -> tuple[list[dict], dict[str, str]]:
    """Every entry of ``groups``, round-robin across real users, capped at ``limit``."""
    test: list[dict] = []
    group_of: dict[str, str] = {}
    for rnd in range(max(len(g) for g in groups)):
        for g in groups:
            if rnd < len(g):
                entry = users[g[rnd]]
                test.append(entry)
                group_of[str(entry["user_id"])] = str(users[g[0]]["user_id"])
    if limit is not None:
        test = test[:limit]
    return test, group_of


@dataclass
class EvalItem:
    """A scored item of one test entry, with the prompt every model method gets."""

    item: ScoredItem
    query_input: str
    prompt: str
    history: list[dict]


@dataclass
class EvalEntry:
    """A test entry in the middle of an evaluation: its shots and its scored items."""

    entry: dict
    shot_indices: list[int]
    items: list[EvalItem] = field(default_factory=list)


def build_items(
    task: Any, entry: dict, *, seed: int, group: str, shots: Sequence[int], history_k: int
) -> list[EvalItem]:
    """The entry's query item(s), plus its non-shot profile items as extra scored items."""
    from mta.tasks import query_example, retrieve_history

    user_id = str(entry["user_id"])
    out = []
    for query in entry["query"]:
        prompt, gold = query_example(task, entry, query, k=history_k)
        history = retrieve_history(
            task, entry["profile"], query["input"], max(history_k, 1), exclude_id=str(query["id"])
        )
        item = ScoredItem(seed, user_id, group, str(query["id"]), "query", gold)
        out.append(EvalItem(item, query["input"], prompt, history))
    prepared = task.prepare_profile(entry["profile"])
    for index, target in enumerate(prepared):
        if index in shots or not task.is_target(target):
            continue
        query_input = task.item_input(target)
        others = [other for n, other in enumerate(prepared) if n != index]
        history = retrieve_history(task, others, query_input, max(history_k, 1))
        prompt = task.prompt(query_input, history[:history_k])
        item_id = str(target.get("id", index))
        gold = task.item_target(target)
        item = ScoredItem(seed, user_id, group, item_id, "profile", gold)
        out.append(EvalItem(item, query_input, prompt, history))
    return out


def build_entries(task: Any, split: Split, *, shots: int, history_k: int) -> list[EvalEntry]:
    """Every test entry of the split with its shots and scored items."""
    from mta.registry.service import shot_indices

    entries = []
    for entry in split.test:
        # The registry picks a stack's shots this way; OPPU and user-majority use the same.
        chosen = shot_indices(len(entry["profile"]), shots, split.seed)
        group = split.group_of[str(entry["user_id"])]
        items = build_items(
            task, entry, seed=split.seed, group=group, shots=chosen, history_k=history_k
        )
        entries.append(EvalEntry(entry, chosen, items))
    return entries


def shot_examples(task: Any, profile: Sequence[dict], shots: Sequence[int], k: int) -> list:
    """Leave-one-out (prompt, target) examples over the shot items only."""
    from mta.tasks import profile_examples

    return profile_examples(task, [profile[i] for i in shots], k=k)
