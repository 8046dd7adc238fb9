"""SQLAlchemy 2 ORM of the registry; rows become entities through `to_entity()` and never leave.

Every blob-holding column is a foreign key to `blobs.digest`, so the database itself refuses a
row that names a blob the registry never recorded. The blob bytes live in the blob store; the
`blobs` table records their size and kind for reports.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, object_session

from mta.registry.entities import Anchor, BankVersion, Recipe, RecipeAnchor, Stack, User
from mta.registry.errors import ImmutableError

# Deterministic constraint names keep Alembic autogenerate and batch mode (SQLite) stable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DIGEST_LEN = 64
# Session.info flag under which a bank row may change (see `_refuse_bank_update`).
REDACTING = "mta_redacting_anchor"
USER_ID_LEN = 128


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """Attach UTC to the naive datetimes SQLite hands back."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    """Declarative base holding the registry metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _blob_fk(nullable: bool = False) -> Mapped[Any]:
    """A column naming a blob by digest."""
    return mapped_column(
        String(DIGEST_LEN), ForeignKey("blobs.digest", ondelete="RESTRICT"), nullable=nullable
    )


class SqlBlob(Base):
    """One content-addressed blob known to the registry."""

    __tablename__ = "blobs"
    __table_args__ = (PrimaryKeyConstraint("digest", name="pk_blobs"),)

    digest: Mapped[str] = mapped_column(String(DIGEST_LEN))
    algo: Mapped[str] = mapped_column(String(16), default="sha256")
    size: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SqlBank(Base):
    """One immutable bank version of a task."""

    __tablename__ = "banks"
    __table_args__ = (
        PrimaryKeyConstraint("id", name="pk_banks"),
        UniqueConstraint("task", "version", name="uq_banks_task_version"),
    )

    id: Mapped[int] = mapped_column(Integer, autoincrement=True)
    task: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(512))
    embedder: Mapped[str] = mapped_column(String(512))
    target_modules: Mapped[list[str]] = mapped_column(JSON)
    rank: Mapped[int] = mapped_column(Integer)
    anchor_data: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    index_blob: Mapped[str] = _blob_fk()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_entity(
        self, *, num_anchors: int, aliases: tuple[str, ...], latest_version: int
    ) -> BankVersion:
        """The bank as an entity (counts and aliases come from the caller's queries)."""
        return BankVersion(
            task=self.task,
            version=self.version,
            base_model=self.base_model,
            embedder=self.embedder,
            target_modules=tuple(self.target_modules),
            rank=self.rank,
            anchor_data=self.anchor_data,
            source=str(self.config.get("source", "build")),
            num_anchors=num_anchors,
            aliases=aliases,
            is_latest=self.version == latest_version,
            created_at=as_utc(self.created_at),
        )


class SqlBankAlias(Base):
    """A movable name (e.g. `prod`) for one version of a task's bank."""

    __tablename__ = "bank_aliases"
    __table_args__ = (
        PrimaryKeyConstraint("task", "alias", name="pk_bank_aliases"),
        ForeignKeyConstraint(
            ["bank_id"], ["banks.id"], name="fk_bank_aliases_bank_id_banks", ondelete="CASCADE"
        ),
    )

    task: Mapped[str] = mapped_column(String(64))
    alias: Mapped[str] = mapped_column(String(64))
    bank_id: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SqlAnchor(Base):
    """One anchor of a bank: its meta-LoRA and its embedding."""

    __tablename__ = "anchors"
    __table_args__ = (
        PrimaryKeyConstraint("id", name="pk_anchors"),
        UniqueConstraint("bank_id", "anchor_id", name="uq_anchors_bank_id_anchor_id"),
        ForeignKeyConstraint(
            ["bank_id"], ["banks.id"], name="fk_anchors_bank_id_banks", ondelete="CASCADE"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, autoincrement=True)
    bank_id: Mapped[int] = mapped_column(Integer)
    anchor_id: Mapped[str] = mapped_column(String(USER_ID_LEN))
    adapter_blob: Mapped[str] = _blob_fk()
    embedding_blob: Mapped[str] = _blob_fk()
    history_length: Mapped[int] = mapped_column(Integer)
    cluster_size: Mapped[int] = mapped_column(Integer)

    def to_entity(self, *, adapter_bytes: int) -> Anchor:
        """The anchor as an entity."""
        return Anchor(
            anchor_id=self.anchor_id,
            history_length=self.history_length,
            cluster_size=self.cluster_size,
            adapter_blob=self.adapter_blob,
            embedding_blob=self.embedding_blob,
            adapter_bytes=adapter_bytes,
        )


class SqlUser(Base):
    """A user, pinned to the bank version that was current when they were added."""

    __tablename__ = "users"
    __table_args__ = (
        PrimaryKeyConstraint("id", name="pk_users"),
        ForeignKeyConstraint(
            ["bank_id"], ["banks.id"], name="fk_users_bank_id_banks", ondelete="RESTRICT"
        ),
    )

    id: Mapped[str] = mapped_column(String(USER_ID_LEN))
    task: Mapped[str] = mapped_column(String(64))
    bank_id: Mapped[int] = mapped_column(Integer)
    profile_blob: Mapped[str] = _blob_fk()
    embedding_blob: Mapped[str] = _blob_fk()
    embedder: Mapped[str] = mapped_column(String(512))
    profile_items: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_entity(self, *, bank_version: int) -> User:
        """The user as an entity."""
        return User(
            user_id=self.id,
            task=self.task,
            bank_version=bank_version,
            embedder=self.embedder,
            profile_items=self.profile_items,
            profile_blob=self.profile_blob,
            embedding_blob=self.embedding_blob,
            created_at=as_utc(self.created_at),
        )


class SqlRecipe(Base):
    """How to rebuild a user's fused adapter: anchors, weights, method; the latest is current."""

    __tablename__ = "recipes"
    __table_args__ = (
        PrimaryKeyConstraint("id", name="pk_recipes"),
        ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_recipes_user_id_users", ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["bank_id"], ["banks.id"], name="fk_recipes_bank_id_banks", ondelete="RESTRICT"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(USER_ID_LEN), index=True)
    bank_id: Mapped[int] = mapped_column(Integer)
    anchors: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(32))
    weight_rule: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_entity(self, *, task: str, bank_version: int) -> Recipe:
        """The recipe as an entity."""
        return Recipe(
            recipe_id=self.id,
            user_id=self.user_id,
            task=task,
            bank_version=bank_version,
            anchors=tuple(
                RecipeAnchor(str(a["anchor_id"]), float(a["score"]), float(a["weight"]))
                for a in self.anchors
            ),
            method=self.method,
            weight_rule=self.weight_rule,
            params=dict(self.params),
            created_at=as_utc(self.created_at),
        )


class SqlStack(Base):
    """A user's trained ultra-low-rank stack; the latest is current."""

    __tablename__ = "stacks"
    __table_args__ = (
        PrimaryKeyConstraint("id", name="pk_stacks"),
        ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_stacks_user_id_users", ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["recipe_id"], ["recipes.id"], name="fk_stacks_recipe_id_recipes", ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["bank_id"], ["banks.id"], name="fk_stacks_bank_id_banks", ondelete="RESTRICT"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(USER_ID_LEN), index=True)
    recipe_id: Mapped[int] = mapped_column(Integer)
    bank_id: Mapped[int] = mapped_column(Integer)
    blob: Mapped[str] = _blob_fk()
    rank: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    bytes: Mapped[int] = mapped_column(Integer)
    train_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    final_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_entity(self, *, task: str, bank_version: int, stale: bool) -> Stack:
        """The stack as an entity."""
        return Stack(
            stack_id=self.id,
            user_id=self.user_id,
            recipe_id=self.recipe_id,
            task=task,
            bank_version=bank_version,
            blob=self.blob,
            rank=self.rank,
            dtype=self.dtype,
            bytes=self.bytes,
            train_config=dict(self.train_config),
            final_loss=self.final_loss,
            stale=stale,
            created_at=as_utc(self.created_at),
        )


class SqlEvalRun(Base):
    """One recorded evaluation run."""

    __tablename__ = "eval_runs"
    __table_args__ = (PrimaryKeyConstraint("id", name="pk_eval_runs"),)

    id: Mapped[int] = mapped_column(Integer, autoincrement=True)
    task: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    results: Mapped[dict[str, Any]] = mapped_column(JSON)


class SqlDeletion(Base):
    """A user deletion in progress: written first, so a re-run or `gc` finishes the job.

    `blobs` lists the digests that may have become unreferenced; they are removed from the
    store (a missing one is nothing to remove) before the row goes. While the row exists,
    the user id answers "not found" everywhere and exports refuse to re-populate caches.
    """

    __tablename__ = "deletions"
    __table_args__ = (PrimaryKeyConstraint("user_id", name="pk_deletions"),)

    user_id: Mapped[str] = mapped_column(String(USER_ID_LEN))
    blobs: Mapped[list[str]] = mapped_column(JSON)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SqlClaim(Base):
    """A bulk job's claim on one user while it fuses or adapts them (`jobs/claims.py`).

    A lease: the holder renews `expires_at` while it works and deletes the row when the
    user is done; another job skips a claimed user until the claim expires. No foreign
    key: a claim is a lock on a user id, taken before the user's rows are read.
    """

    __tablename__ = "claims"
    __table_args__ = (PrimaryKeyConstraint("user_id", name="pk_claims"),)

    user_id: Mapped[str] = mapped_column(String(USER_ID_LEN))
    job_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# (table, column) pairs that reference blobs; gc, fsck and delete_user walk exactly these.
BLOB_REFERENCES: tuple[tuple[type[Base], str], ...] = (
    (SqlBank, "index_blob"),
    (SqlAnchor, "adapter_blob"),
    (SqlAnchor, "embedding_blob"),
    (SqlUser, "profile_blob"),
    (SqlUser, "embedding_blob"),
    (SqlStack, "blob"),
)


@event.listens_for(SqlBank, "before_update")
def _refuse_bank_update(_mapper: Any, _connection: Any, target: SqlBank) -> None:
    """Bank versions are immutable: publish a new version instead (aliases move).

    The one exception is erasing a deleted user's anchor (`anchor_redaction`), which marks
    its session with `REDACTING`: forgetting a person outranks a version's immutability.
    """
    session = object_session(target)
    if session is not None and session.info.get(REDACTING):
        return
    raise ImmutableError(
        f"bank {target.task} v{target.version} is immutable; publish a new version"
    )
