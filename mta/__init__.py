"""MTA: Merge-then-Adapt personalization of LLMs, the storage-free method core."""

__version__ = "0.1.0"
