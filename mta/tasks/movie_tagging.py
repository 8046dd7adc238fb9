"""LaMP-2 movie tagging: pick one of 15 tags for a movie description."""

from __future__ import annotations

import re
from collections.abc import Sequence

from mta.tasks import metrics
from mta.tasks.base import LampTask, truncate_words

# The 15 tags, in the order the official LaMP-2 question lists them.
MOVIE_TAGS = (
    "sci-fi",
    "based on a book",
    "comedy",
    "action",
    "twist ending",
    "dystopia",
    "dark comedy",
    "classic",
    "psychology",
    "fantasy",
    "romance",
    "thought-provoking",
    "social commentary",
    "violence",
    "true story",
)

QUESTION = (
    "Which tag does this movie relate to among the following tags? Just answer with the tag "
    "name without further explanation. tags: [{tags}] description: {description}"
)

_TAG_PATTERNS = [
    (tag, re.compile(r"(?<![\w-])" + re.escape(tag) + r"(?![\w-])")) for tag in MOVIE_TAGS
]


class MovieTagging(LampTask):
    """LaMP-2: profile items {tag, description, id}; output one of the 15 tags."""

    name = "movie_tagging"
    lamp_id = "LaMP-2"
    metrics = ("accuracy", "f1")
    profile_fields = ("tag", "description")
    labels = MOVIE_TAGS
    input_marker = "description:"
    history_intro = "Movies this user tagged before:"
    answer_cue = "Tag:"

    def check_item(self, item: dict) -> None:
        """Also require the tag to be one of the 15 LaMP-2 tags."""
        super().check_item(item)
        if item["tag"] not in MOVIE_TAGS:
            raise ValueError(
                f"movie_tagging item {item.get('id', '?')!r} has tag {item['tag']!r}, "
                f"not one of: {', '.join(MOVIE_TAGS)}"
            )

    def item_text(self, item: dict) -> str:
        """Tag and description: the tag is the user's taste, the description the movie."""
        return f"{self.field(item, 'tag')}: {self.field(item, 'description')}"

    def item_input(self, item: dict) -> str:
        """The official LaMP-2 question about this item's description."""
        description = self.field(item, "description")
        return QUESTION.format(tags=", ".join(MOVIE_TAGS), description=description)

    def item_target(self, item: dict) -> str:
        """The item's tag."""
        return self.field(item, "tag")

    def history_line(self, item: dict) -> str:
        """`Description: ... Tag: ...` with the description cut to the budget."""
        description = truncate_words(self.field(item, "description"), self.history_words)
        return f"Description: {description} Tag: {self.field(item, 'tag')}"

    def parse(self, generated: str, query_input: str) -> str:
        """The tag named first in the generation ("" when it names none)."""
        text = generated.strip().lower()
        if text in MOVIE_TAGS:
            return text
        found = [(m.start(), -len(tag), tag) for tag, p in _TAG_PATTERNS if (m := p.search(text))]
        return min(found)[2] if found else ""

    def score(self, predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
        """Accuracy and macro-F1 over the 15 tags."""
        return metrics.accuracy_f1(predictions, golds, MOVIE_TAGS)

    def answer_from_history(self, query_input: str, history: Sequence[dict]) -> str:
        """The top history item's tag."""
        return self.item_target(history[0]) if history else ""
