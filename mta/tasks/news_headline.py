"""LaMP-4 news headline generation: write the headline of an article in the user's style."""

from __future__ import annotations

from collections.abc import Sequence

from mta.tasks import metrics
from mta.tasks.base import LampTask, clean_generation, truncate_words

QUESTION = "Generate a headline for the following article: {text}"


class NewsHeadline(LampTask):
    """LaMP-4: profile items {text, title, id}; output a headline."""

    name = "news_headline"
    lamp_id = "LaMP-4"
    metrics = ("rouge1", "rougeL")
    profile_fields = ("text", "title")
    input_marker = "article:"
    history_intro = "Headlines this user wrote before:"
    answer_cue = "Headline:"

    def item_text(self, item: dict) -> str:
        """Headline and article text."""
        return f"{self.field(item, 'title')}. {self.field(item, 'text')}"

    def item_input(self, item: dict) -> str:
        """The official LaMP-4 question about this article."""
        return QUESTION.format(text=self.field(item, "text"))

    def item_target(self, item: dict) -> str:
        """The item's headline."""
        return self.field(item, "title")

    def history_line(self, item: dict) -> str:
        """`Article: ... Headline: ...` with the article cut to the budget."""
        text = truncate_words(self.field(item, "text"), self.history_words)
        return f"Article: {text} Headline: {self.field(item, 'title')}"

    def parse(self, generated: str, query_input: str) -> str:
        """First non-empty line without a `Headline:` cue or quotes."""
        return clean_generation(generated)

    def score(self, predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
        """ROUGE-1 and ROUGE-L F-measures."""
        return metrics.rouge(predictions, golds)

    def answer_from_history(self, query_input: str, history: Sequence[dict]) -> str:
        """The top history item's headline."""
        return self.item_target(history[0]) if history else ""
