"""LaMP-4 news headline generation: write the headline of an article in the user's style."""

from __future__ import annotations

from mta.tasks.title_generation import TitleGenerationTask


class NewsHeadline(TitleGenerationTask):
    """LaMP-4: profile items {text, title, id}; output a headline."""

    name = "news_headline"
    lamp_id = "LaMP-4"
    profile_fields = ("text", "title")
    source_field = "text"
    target_field = "title"
    question = "Generate a headline for the following article: {text}"
    source_label = "Article"
    target_label = "Headline"
    input_marker = "article:"
    history_intro = "Headlines this user wrote before:"
    answer_cue = "Headline:"
