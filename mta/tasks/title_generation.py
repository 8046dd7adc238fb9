"""Shared body of the LaMP tasks that write a short title-like field for a longer text field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mta.tasks import metrics
from mta.tasks.base import LampTask, clean_generation, truncate_words


class TitleGenerationTask(LampTask):
    """Generate `target_field` (e.g. a headline) from `source_field` (e.g. an article).

    Subclasses set the LampTask attributes plus the field names, the official question (with a
    `{text}` placeholder for the source) and the labels used in history lines.
    """

    source_field: ClassVar[str]
    target_field: ClassVar[str]
    question: ClassVar[str]
    source_label: ClassVar[str]
    target_label: ClassVar[str]
    metrics = ("rouge1", "rougeL")

    def item_text(self, item: dict) -> str:
        """Target and source text."""
        return f"{self.field(item, self.target_field)}. {self.field(item, self.source_field)}"

    def item_input(self, item: dict) -> str:
        """The official LaMP question about this item's source text."""
        return self.question.format(text=self.field(item, self.source_field))

    def item_target(self, item: dict) -> str:
        """The item's target field."""
        return self.field(item, self.target_field)

    def history_line(self, item: dict) -> str:
        """`<Source>: ... <Target>: ...` with the source cut to the budget."""
        source = truncate_words(self.field(item, self.source_field), self.history_words)
        return f"{self.source_label}: {source} {self.target_label}: {self.item_target(item)}"

    def parse(self, generated: str, query_input: str) -> str:
        """First non-empty line without an answer cue or quotes."""
        return clean_generation(generated)

    def score(self, predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
        """ROUGE-1 and ROUGE-L F-measures."""
        return metrics.rouge(predictions, golds)

    def answer_from_history(self, query_input: str, history: Sequence[dict]) -> str:
        """The top history item's target."""
        return self.item_target(history[0]) if history else ""
