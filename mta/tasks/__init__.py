"""LaMP tasks registered by name (prompt, retrieval, parsing, metrics)."""
