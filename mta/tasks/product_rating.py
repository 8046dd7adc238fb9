"""LaMP-3 product rating: predict the 1-5 star score of a review."""

from __future__ import annotations

import re
from collections.abc import Sequence

from mta.tasks import metrics
from mta.tasks.base import LampTask, truncate_words

RATINGS = ("1", "2", "3", "4", "5")

# Official LaMP-3 wording (its lowercase "just" included).
QUESTION = (
    "What is the score of the following review on a scale of 1 to 5? just answer with "
    "1, 2, 3, 4, or 5 without further explanation. review: {text}"
)

_DIGIT = re.compile(r"(?<!\d)[1-5](?!\d)")


def _rating_text(value: object) -> str | None:
    """A score field ("5", 5, "5.0") as one of RATINGS, or None."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    if number.is_integer() and 1 <= number <= 5:
        return str(int(number))
    return None


class ProductRating(LampTask):
    """LaMP-3: profile items {text, score, id}; output "1".."5"."""

    name = "product_rating"
    lamp_id = "LaMP-3"
    metrics = ("mae", "rmse")
    profile_fields = ("text", "score")
    labels = RATINGS
    input_marker = "review:"
    history_intro = "Reviews this user wrote before:"
    answer_cue = "Score:"
    history_words = 40

    def check_item(self, item: dict) -> None:
        """Also require the score to be an integer from 1 to 5."""
        super().check_item(item)
        if _rating_text(item["score"]) is None:
            raise ValueError(
                f"product_rating item {item.get('id', '?')!r} has score {item['score']!r}, "
                "not an integer from 1 to 5"
            )

    def item_text(self, item: dict) -> str:
        """The review text."""
        return self.field(item, "text")

    def item_input(self, item: dict) -> str:
        """The official LaMP-3 question about this review."""
        return QUESTION.format(text=self.field(item, "text"))

    def item_target(self, item: dict) -> str:
        """The score as "1".."5" (the field's own text when it is not a valid rating)."""
        score = self.field(item, "score")
        return _rating_text(score) or score

    def history_line(self, item: dict) -> str:
        """`Review: ... Score: n` with the review cut to the budget."""
        text = truncate_words(self.field(item, "text"), self.history_words)
        return f"Review: {text} Score: {self.item_target(item)}"

    def parse(self, generated: str, query_input: str) -> str:
        """The first standalone digit 1-5 in the generation.

        Returns "" when there is none; `score` then counts that prediction as the rating
        farthest from the gold (the LaMP convention), so it is never silently rewarded.
        """
        match = _DIGIT.search(generated)
        return match.group(0) if match else ""

    def score(self, predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
        """MAE and RMSE (lower is better)."""
        return metrics.mae_rmse(predictions, golds)

    def answer_from_history(self, query_input: str, history: Sequence[dict]) -> str:
        """The top history item's score."""
        return self.item_target(history[0]) if history else ""
