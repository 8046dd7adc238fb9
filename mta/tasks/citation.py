"""LaMP-1 citation identification: which of two references would the author cite?

Profile items are the author's papers, {title, abstract, id}. A paper alone is not a
two-option question, so `prepare_profile` builds one per paper from the author's other
papers: the correct reference is the title of their most similar other paper (BM25 over
title + abstract), the distractor the title of the least similar one, and the order is
fixed by a hash of the item id (about half the answers are "[2]"). This teaches what the
real query asks: prefer the reference closer to this author's own work. Items in the MTA
reference format, which carry a `citation` (a title the paper cites), use that as the
correct reference instead and the nearest other item's citation as the distractor.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

from mta.errors import DataFormatError
from mta.tasks import metrics
from mta.tasks.base import LampTask, words
from mta.tasks.retrieval import rank_items

CHOICES = ("[1]", "[2]")

QUESTION = (
    'For an author who has written the paper with the title "{title}", which reference is '
    'related? Just answer with [1] or [2] without explanation. [1]: "{ref1}" [2]: "{ref2}"'
)

_OPTIONS = re.compile(r'\[1\]\s*:\s*"(?P<one>.*?)"\s*\[2\]\s*:\s*"(?P<two>.*?)"', re.S)
_QUOTED = re.compile(r'"([^"]+)"')
_BRACKETED = re.compile(r"\[\s*([12])\s*\]")
_BARE = re.compile(r"(?<!\d)([12])(?!\d)")


def parse_options(query_input: str) -> tuple[str, str] | None:
    """The two reference titles of a LaMP-1 question, or None when it has no such part."""
    match = _OPTIONS.search(query_input)
    return (match.group("one"), match.group("two")) if match else None


class Citation(LampTask):
    """LaMP-1: profile items {title, abstract, id}; output "[1]" or "[2]"."""

    name = "citation"
    lamp_id = "LaMP-1"
    metrics = ("accuracy", "f1")
    profile_fields = ("title",)
    labels = CHOICES
    history_intro = "Papers this author wrote before:"
    content_words = 110

    def item_text(self, item: dict) -> str:
        """Title and abstract (abstract optional)."""
        abstract = item.get("abstract") or ""
        return f"{self.field(item, 'title')}. {abstract}".strip()

    def prepare_profile(self, profile: Sequence[dict]) -> list[dict]:
        """Copies of the items, each with `options` and `answer` when it has ≥ 2 other items."""
        prepared = [dict(item) for item in profile]
        for index, item in enumerate(prepared):
            if "options" in item and "answer" in item:
                continue
            others = [other for n, other in enumerate(profile) if n != index]
            pair = self._reference_pair(item, others)
            if pair is None:
                continue
            related, distractor = pair
            key = str(item.get("id") or self.field(item, "title"))
            if zlib.crc32(key.encode("utf-8")) % 2 == 0:
                item["options"], item["answer"] = [related, distractor], "[1]"
            else:
                item["options"], item["answer"] = [distractor, related], "[2]"
        return prepared

    def _reference_pair(self, item: dict, others: Sequence[dict]) -> tuple[str, str] | None:
        """(related title, distractor title) for an item, or None when none can be built."""
        if item.get("citation"):
            candidates = [
                o for o in others if o.get("citation") and o["citation"] != item["citation"]
            ]
            if not candidates:
                return None
            order = rank_items(self, candidates, self.field(item, "title"))
            return str(item["citation"]), str(candidates[order[0]]["citation"])
        title = self.field(item, "title")
        candidates = [o for o in others if self.field(o, "title") != title]
        if len(candidates) < 2:
            return None
        order = rank_items(self, candidates, self.item_text(item))
        related = self.field(candidates[order[0]], "title")
        distractor = self.field(candidates[order[-1]], "title")
        return (related, distractor) if related != distractor else None

    def is_target(self, item: dict) -> bool:
        """Only items that `prepare_profile` could give two options."""
        return "options" in item and "answer" in item

    def item_input(self, item: dict) -> str:
        """The official LaMP-1 question built from a prepared item."""
        if not self.is_target(item):
            raise DataFormatError(
                f"citation item {item.get('id', '?')!r} has no reference options; "
                "pass it through prepare_profile() first"
            )
        ref1, ref2 = item["options"]
        return QUESTION.format(title=self.field(item, "title"), ref1=ref1, ref2=ref2)

    def item_target(self, item: dict) -> str:
        """ "[1]" or "[2]" for a prepared item."""
        if not self.is_target(item):
            raise DataFormatError(
                f"citation item {item.get('id', '?')!r} has no answer; "
                "pass it through prepare_profile() first"
            )
        return str(item["answer"])

    def history_line(self, item: dict) -> str:
        """The paper's title."""
        return f'Paper: "{self.field(item, "title")}"'

    def query_text(self, query_input: str) -> str:
        """The quoted title and reference titles (the instruction words would only add noise)."""
        quoted = _QUOTED.findall(query_input)
        return " ".join(quoted) if quoted else query_input

    def parse(self, generated: str, query_input: str) -> str:
        """The choice, "[1]"/"[2]", from a bracketed or bare digit, else a quoted reference title.

        Returns "" when the generation names neither option (scored as wrong).
        """
        match = _BRACKETED.search(generated) or _BARE.search(generated)
        if match:
            return f"[{match.group(1)}]"
        options = parse_options(query_input)
        text = generated.strip().lower()
        if options and text:
            hits = [n for n, option in enumerate(options) if option.lower() in text]
            if len(hits) == 1:
                return CHOICES[hits[0]]
        return ""

    def score(self, predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
        """Accuracy and macro-F1 over [1]/[2]."""
        return metrics.accuracy_f1(predictions, golds, CHOICES)

    def answer_from_history(self, query_input: str, history: Sequence[dict]) -> str:
        """The option sharing more words with the retrieved papers ("[1]" on a tie)."""
        options = parse_options(query_input)
        if not options or not history:
            return ""
        seen = {w for item in history for w in words(self.item_text(item)) if len(w) > 3}
        overlaps = [len(seen & set(words(option))) for option in options]
        return CHOICES[1] if overlaps[1] > overlaps[0] else CHOICES[0]
