"""LaMP tasks registered by name (prompt, retrieval, parsing, metrics)."""

from __future__ import annotations

from mta.errors import unknown_name
from mta.tasks.base import LampTask, Task
from mta.tasks.citation import Citation
from mta.tasks.movie_tagging import MovieTagging
from mta.tasks.news_headline import NewsHeadline
from mta.tasks.product_rating import ProductRating
from mta.tasks.retrieval import item_example, profile_examples, query_example, retrieve_history
from mta.tasks.scholarly_title import ScholarlyTitle

# The one place tasks are registered; callers look them up with get_task(name).
TASKS: dict[str, LampTask] = {
    task.name: task
    for task in (Citation(), MovieTagging(), ProductRating(), NewsHeadline(), ScholarlyTitle())
}


def get_task(name: str) -> LampTask:
    """The task registered under `name`.

    Raises:
        UnknownNameError: listing the valid task names.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise unknown_name("task", name, list(TASKS)) from None


__all__ = [
    "TASKS",
    "LampTask",
    "Task",
    "get_task",
    "item_example",
    "profile_examples",
    "query_example",
    "retrieve_history",
]
