"""Fixtures for the real PostgreSQL and S3-compatible servers that .ci/run starts."""
