"""LaMP-5 scholarly title generation: title a paper abstract in the author's style."""

from __future__ import annotations

from collections.abc import Sequence

from mta.tasks import metrics
from mta.tasks.base import LampTask, clean_generation, truncate_words

QUESTION = "Generate a title for the following abstract of a paper: {abstract}"


class ScholarlyTitle(LampTask):
    """LaMP-5: profile items {abstract, title, id}; output a paper title."""

    name = "scholarly_title"
    lamp_id = "LaMP-5"
    metrics = ("rouge1", "rougeL")
    profile_fields = ("abstract", "title")
    input_marker = "of a paper:"
    history_intro = "Papers this author titled before:"
    answer_cue = "Title:"
    history_words = 40

    def item_text(self, item: dict) -> str:
        """Title and abstract."""
        return f"{self.field(item, 'title')}. {self.field(item, 'abstract')}"

    def item_input(self, item: dict) -> str:
        """The official LaMP-5 question about this abstract."""
        return QUESTION.format(abstract=self.field(item, "abstract"))

    def item_target(self, item: dict) -> str:
        """The item's title."""
        return self.field(item, "title")

    def history_line(self, item: dict) -> str:
        """`Abstract: ... Title: ...` with the abstract cut to the budget."""
        abstract = truncate_words(self.field(item, "abstract"), self.history_words)
        return f"Abstract: {abstract} Title: {self.field(item, 'title')}"

    def parse(self, generated: str, query_input: str) -> str:
        """First non-empty line without a `Title:` cue or quotes."""
        return clean_generation(generated)

    def score(self, predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
        """ROUGE-1 and ROUGE-L F-measures."""
        return metrics.rouge(predictions, golds)

    def answer_from_history(self, query_input: str, history: Sequence[dict]) -> str:
        """The top history item's title."""
        return self.item_target(history[0]) if history else ""
