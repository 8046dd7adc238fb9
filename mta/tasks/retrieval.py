"""BM25 history retrieval and the (prompt, target) examples built from a user's profile."""

from __future__ import annotations

from collections.abc import Sequence

from mta.errors import DataFormatError
from mta.tasks.base import LampTask, words


def rank_items(task: LampTask, items: Sequence[dict], query_text: str) -> list[int]:
    """Indices of `items` by BM25 score of their `item_text` against `query_text`.

    Ties keep profile order, so equal inputs always give the same history.
    """
    if not items:
        return []
    corpus = [words(task.item_text(item)) for item in items]
    query = words(query_text)
    if not query or not any(corpus):
        return list(range(len(items)))
    from rank_bm25 import BM25Okapi

    scores = BM25Okapi(corpus).get_scores(query)
    return sorted(range(len(items)), key=lambda n: (-float(scores[n]), n))


def retrieve_history(
    task: LampTask,
    profile: Sequence[dict],
    query_input: str,
    k: int = 1,
    exclude_id: str | None = None,
) -> list[dict]:
    """The top-k profile items for a query by BM25 (the paper retrieves top-1).

    Args:
        task: the task whose `item_text` and `query_text` define the match.
        profile: the user's history items.
        query_input: the official query input.
        k: how many items to return (0 returns none).
        exclude_id: an item id to leave out (e.g. the query's own item).

    Returns:
        Up to k items, best match first.
    """
    if k <= 0:
        return []
    pool = [item for item in profile if exclude_id is None or str(item.get("id")) != exclude_id]
    order = rank_items(task, pool, task.query_text(query_input))
    return [pool[n] for n in order[:k]]


def _leave_one_out(task: LampTask, prepared: Sequence[dict], index: int, k: int) -> tuple[str, str]:
    """Example for prepared item `index` with history from the other prepared items."""
    item = prepared[index]
    query_input = task.item_input(item)
    others = [other for n, other in enumerate(prepared) if n != index]
    history = []
    if k > 0:
        order = rank_items(task, others, task.query_text(query_input))
        history = [others[n] for n in order[:k]]
    return task.prompt(query_input, history), task.item_target(item)


def item_example(
    task: LampTask, profile: Sequence[dict], index: int, *, k: int = 1
) -> tuple[str, str]:
    """(prompt, target) for profile item `index`, its history retrieved from the other items.

    Used to score held-out profile items: pass the items allowed as history plus the target.
    """
    if not 0 <= index < len(profile):
        raise IndexError(f"profile item {index} out of range (profile has {len(profile)})")
    prepared = task.prepare_profile(profile)
    if not task.is_target(prepared[index]):
        raise DataFormatError(
            f"{task.name} item {prepared[index].get('id', index)!r} cannot be turned into a "
            "query (too few other items)"
        )
    return _leave_one_out(task, prepared, index, k)


def profile_examples(
    task: LampTask, profile: Sequence[dict], *, k: int = 1
) -> list[tuple[str, str]]:
    """Leave-one-out training examples: each item is a target, the rest its history.

    Args:
        task: the task.
        profile: the user's history items.
        k: history items retrieved into each prompt.

    Returns:
        One (prompt, target) per usable item, in profile order.
    """
    prepared = task.prepare_profile(profile)
    return [
        _leave_one_out(task, prepared, index, k)
        for index, item in enumerate(prepared)
        if task.is_target(item)
    ]


def query_example(task: LampTask, user: dict, query: dict, *, k: int = 1) -> tuple[str, str]:
    """(prompt, gold) for one of a user's queries, history retrieved from the whole profile.

    Raises:
        DataFormatError: when the query has no gold.
    """
    gold = query.get("gold")
    if gold is None:
        raise DataFormatError(
            f"user {user.get('user_id')!r}: query {query.get('id')!r} has no 'gold'"
        )
    query_id = query.get("id")
    history = retrieve_history(
        task,
        user["profile"],
        query["input"],
        k,
        exclude_id=None if query_id is None else str(query_id),
    )
    return task.prompt(query["input"], history), str(gold)
