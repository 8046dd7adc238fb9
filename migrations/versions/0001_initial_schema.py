"""Initial registry schema: blobs, banks, aliases, anchors, users, recipes, stacks, eval runs.

Frozen: this file spells out its tables instead of importing the ORM, so it keeps creating
exactly this schema whatever the models become. Later changes go in new revisions.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIGEST = sa.String(64)
USER_ID = sa.String(128)


def _when(name: str = "created_at") -> sa.Column:
    """A timezone-aware timestamp column."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _blob(name: str, table: str) -> tuple[sa.Column, sa.ForeignKeyConstraint]:
    """A column naming a blob, with its named foreign key to `blobs`."""
    return (
        sa.Column(name, DIGEST, nullable=False),
        sa.ForeignKeyConstraint(
            [name], ["blobs.digest"], name=f"fk_{table}_{name}_blobs", ondelete="RESTRICT"
        ),
    )


# long: a frozen revision, one create_table per table; revisions are never edited or split
def upgrade() -> None:
    """Create every table."""
    op.create_table(
        "blobs",
        sa.Column("digest", DIGEST, nullable=False),
        sa.Column("algo", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        _when(),
        sa.PrimaryKeyConstraint("digest", name="pk_blobs"),
    )
    op.create_table(
        "banks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("embedder", sa.String(512), nullable=False),
        sa.Column("target_modules", sa.JSON(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("anchor_data", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        *_blob("index_blob", "banks"),
        _when(),
        sa.PrimaryKeyConstraint("id", name="pk_banks"),
        sa.UniqueConstraint("task", "version", name="uq_banks_task_version"),
    )
    op.create_table(
        "bank_aliases",
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("bank_id", sa.Integer(), nullable=False),
        _when("updated_at"),
        sa.PrimaryKeyConstraint("task", "alias", name="pk_bank_aliases"),
        sa.ForeignKeyConstraint(
            ["bank_id"], ["banks.id"], name="fk_bank_aliases_bank_id_banks", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "anchors",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("bank_id", sa.Integer(), nullable=False),
        sa.Column("anchor_id", USER_ID, nullable=False),
        *_blob("adapter_blob", "anchors"),
        *_blob("embedding_blob", "anchors"),
        sa.Column("history_length", sa.Integer(), nullable=False),
        sa.Column("cluster_size", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_anchors"),
        sa.UniqueConstraint("bank_id", "anchor_id", name="uq_anchors_bank_id_anchor_id"),
        sa.ForeignKeyConstraint(
            ["bank_id"], ["banks.id"], name="fk_anchors_bank_id_banks", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "users",
        sa.Column("id", USER_ID, nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("bank_id", sa.Integer(), nullable=False),
        *_blob("profile_blob", "users"),
        *_blob("embedding_blob", "users"),
        sa.Column("embedder", sa.String(512), nullable=False),
        sa.Column("profile_items", sa.Integer(), nullable=False),
        _when(),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.ForeignKeyConstraint(
            ["bank_id"], ["banks.id"], name="fk_users_bank_id_banks", ondelete="RESTRICT"
        ),
    )
    op.create_table(
        "recipes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", USER_ID, nullable=False),
        sa.Column("bank_id", sa.Integer(), nullable=False),
        sa.Column("anchors", sa.JSON(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("weight_rule", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        _when(),
        sa.PrimaryKeyConstraint("id", name="pk_recipes"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_recipes_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["bank_id"], ["banks.id"], name="fk_recipes_bank_id_banks", ondelete="RESTRICT"
        ),
    )
    op.create_index("ix_recipes_user_id", "recipes", ["user_id"])
    op.create_table(
        "stacks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", USER_ID, nullable=False),
        sa.Column("recipe_id", sa.Integer(), nullable=False),
        sa.Column("bank_id", sa.Integer(), nullable=False),
        *_blob("blob", "stacks"),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("train_config", sa.JSON(), nullable=False),
        sa.Column("final_loss", sa.Float(), nullable=True),
        _when(),
        sa.PrimaryKeyConstraint("id", name="pk_stacks"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_stacks_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["recipe_id"], ["recipes.id"], name="fk_stacks_recipe_id_recipes", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["bank_id"], ["banks.id"], name="fk_stacks_bank_id_banks", ondelete="RESTRICT"
        ),
    )
    op.create_index("ix_stacks_user_id", "stacks", ["user_id"])
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        _when(),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_eval_runs"),
    )


def downgrade() -> None:
    """Drop every table (children first)."""
    op.drop_table("eval_runs")
    op.drop_index("ix_stacks_user_id", table_name="stacks")
    op.drop_table("stacks")
    op.drop_index("ix_recipes_user_id", table_name="recipes")
    op.drop_table("recipes")
    op.drop_table("users")
    op.drop_table("anchors")
    op.drop_table("bank_aliases")
    op.drop_table("banks")
    op.drop_table("blobs")
