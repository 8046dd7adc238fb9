"""The task contract and the shared prompt/truncation logic of the LaMP tasks."""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from mta.errors import DataFormatError

_WORD = re.compile(r"\w+")
_CUE = re.compile(r"^\s*(?:answer|response|output|headline|title|tag|score)\s*:\s*", re.I)
_QUOTES = "\"'`*“”‘’ \t"


def words(text: str) -> list[str]:
    """Lowercase word tokens (BM25 tokenization)."""
    return _WORD.findall(text.lower())


def truncate_words(text: str, limit: int) -> str:
    """Keep the first `limit` whitespace-separated words, marking a cut with an ellipsis."""
    parts = text.split()
    if len(parts) <= limit:
        return " ".join(parts)
    return " ".join(parts[:limit]) + " ..."


def clean_generation(generated: str) -> str:
    """First non-empty line of a generation, without an answer cue or surrounding quotes."""
    for line in generated.splitlines():
        line = _CUE.sub("", line).strip(_QUOTES)
        if line:
            return line
    return ""


@runtime_checkable
class Task(Protocol):
    """What the rest of the code needs from a LaMP task (see docs/internals.md)."""

    name: str
    lamp_id: str
    metrics: tuple[str, ...]

    def item_text(self, item: dict) -> str: ...
    def item_input(self, item: dict) -> str: ...
    def item_target(self, item: dict) -> str: ...
    def prompt(self, query_input: str, history: Sequence[dict]) -> str: ...
    def parse(self, generated: str, query_input: str) -> str: ...
    def score(self, predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]: ...


class LampTask(abc.ABC):
    """Common behaviour: field checks, compact prompts, query-content extraction.

    Subclasses set the class attributes and implement the item accessors, `parse` and `score`.
    """

    name: ClassVar[str]
    lamp_id: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    profile_fields: ClassVar[tuple[str, ...]]
    # Closed label set for classification tasks, None for generation.
    labels: ClassVar[tuple[str, ...] | None] = None
    # Lowercase text that ends the instruction in an official input; the content follows it.
    input_marker: ClassVar[str | None] = None
    history_intro: ClassVar[str]
    answer_cue: ClassVar[str] = "Answer:"
    # Word budgets keep SmolLM2 prompts near 300 tokens (about 1.4 tokens per word).
    history_words: ClassVar[int] = 45
    content_words: ClassVar[int] = 90

    def check_item(self, item: dict) -> None:
        """Raise ValueError when a profile item lacks one of this task's fields."""
        for field in self.profile_fields:
            value = item.get(field)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise ValueError(
                    f"{self.name} item {item.get('id', '?')!r} has no {field!r} "
                    f"(needs {', '.join(self.profile_fields)})"
                )

    def field(self, item: dict, name: str) -> str:
        """A required item field as a string, or DataFormatError naming the item."""
        value = item.get(name)
        if value is None:
            raise DataFormatError(
                f"{self.name} item {item.get('id', '?')!r} has no {name!r} "
                f"(needs {', '.join(self.profile_fields)})"
            )
        return str(value)

    @abc.abstractmethod
    def item_text(self, item: dict) -> str:
        """Text that represents a profile item (embedding, BM25)."""

    @abc.abstractmethod
    def item_input(self, item: dict) -> str:
        """A profile item phrased as an official LaMP query input."""

    @abc.abstractmethod
    def item_target(self, item: dict) -> str:
        """The gold output of a profile item."""

    @abc.abstractmethod
    def history_line(self, item: dict) -> str:
        """One history item as shown in a prompt (already truncated)."""

    @abc.abstractmethod
    def parse(self, generated: str, query_input: str) -> str:
        """Normalize a generation into a prediction comparable with golds."""

    @abc.abstractmethod
    def score(self, predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
        """Metrics of this task, keyed by the names in `metrics`."""

    @abc.abstractmethod
    def answer_from_history(self, query_input: str, history: Sequence[dict]) -> str:
        """The trivial `retrieved` baseline: answer by copying the top history item."""

    def prepare_profile(self, profile: Sequence[dict]) -> list[dict]:
        """Items ready for `item_input`/`item_target` (copies; citation adds its options)."""
        return [dict(item) for item in profile]

    def is_target(self, item: dict) -> bool:
        """Whether a prepared profile item can serve as a leave-one-out training target."""
        return True

    def query_text(self, query_input: str) -> str:
        """The content part of a query input (without the instruction), for retrieval."""
        if self.input_marker is not None:
            cut = query_input.lower().find(self.input_marker)
            if cut >= 0:
                return query_input[cut + len(self.input_marker) :].strip()
        return query_input

    def compact_input(self, query_input: str) -> str:
        """The query input with its content cut to the word budget (instruction kept)."""
        if self.input_marker is not None:
            cut = query_input.lower().find(self.input_marker)
            if cut >= 0:
                end = cut + len(self.input_marker)
                content = truncate_words(query_input[end:], self.content_words)
                return f"{query_input[:end].strip()} {content}"
        # Without a marker keep the instruction's length on top of the content budget.
        return truncate_words(query_input, self.content_words + 40)

    def prompt(self, query_input: str, history: Sequence[dict]) -> str:
        """Instruction-style prompt: retrieved history lines, the query input, an answer cue."""
        parts = []
        if history:
            lines = "\n".join(self.history_line(item) for item in history)
            parts.append(f"{self.history_intro}\n{lines}\n")
        parts.append(self.compact_input(query_input))
        parts.append(self.answer_cue)
        return "\n".join(parts)
