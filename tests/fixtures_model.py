"""Fixtures that build tiny models and adapters for fast tests."""
