"""Content-addressed blob stores chosen by URL scheme."""
