"""LaMP-5 scholarly title generation: title a paper abstract in the author's style."""

from __future__ import annotations

from mta.tasks.title_generation import TitleGenerationTask


class ScholarlyTitle(TitleGenerationTask):
    """LaMP-5: profile items {abstract, title, id}; output a paper title."""

    name = "scholarly_title"
    lamp_id = "LaMP-5"
    profile_fields = ("abstract", "title")
    source_field = "abstract"
    target_field = "title"
    question = "Generate a title for the following abstract of a paper: {text}"
    source_label = "Abstract"
    target_label = "Title"
    input_marker = "of a paper:"
    history_intro = "Papers this author titled before:"
    answer_cue = "Title:"
    history_words = 40
