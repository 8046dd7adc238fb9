"""Alembic migrations for the registry schema.

The registry runs them by path (`mta.registry.db.MIGRATIONS_DIR`, this folder beside the
registry's own), never by importing this package: `env.py` imports the registry, and the
arrows between the two point one way only.
"""
