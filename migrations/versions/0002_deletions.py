"""Deletion tombstones: a user deletion is recorded first and finished by a re-run or gc.

Frozen like 0001: the table is spelled out here, not imported from the ORM.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the deletions table."""
    op.create_table(
        "deletions",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("blobs", sa.JSON(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_deletions"),
    )


def downgrade() -> None:
    """Drop the deletions table."""
    op.drop_table("deletions")
