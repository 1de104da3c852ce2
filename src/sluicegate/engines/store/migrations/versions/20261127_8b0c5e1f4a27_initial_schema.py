"""Initial schema: the tables ``create_all`` made before Sluicegate had migrations.

Revision ID: 8b0c5e1f4a27
Revises:
Create Date: 2026-11-27

A table that already exists is left as it is: a database from before migrations may
have only some of these tables (those of the version that made it). One that has all of
them is stamped at this revision instead (see ``sluicegate.engines.store.migrate``).
Unique and foreign-key constraints are unnamed, as ``create_all`` made them, so the
databases it made and those made here have the same constraint names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from alembic import context, op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "8b0c5e1f4a27"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _existing_tables() -> set[str]:
    if context.is_offline_mode():
        return set()
    return set(sa.inspect(op.get_bind()).get_table_names())


def upgrade() -> None:
    existing = _existing_tables()

    if "challenges" not in existing:
        op.create_table(
            "challenges",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(length=100), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("name"),
        )

    if "challenge_messages" not in existing:
        op.create_table(
            "challenge_messages",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("challenge_id", sa.Integer(), nullable=False),
            sa.Column("author", sa.String(length=100), nullable=False),
            sa.Column("text", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(["challenge_id"], ["challenges.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_challenge_messages_challenge_id", "challenge_messages", ["challenge_id"])

    if "ingest_sessions" not in existing:
        op.create_table(
            "ingest_sessions",
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.Column("job_id", sa.String(length=64), nullable=False),
            sa.Column("tenant", sa.Integer(), nullable=False),
            sa.Column("session_type", sa.String(length=16), nullable=False),
            sa.Column("session_name", sa.String(length=200), nullable=False),
            sa.Column("metadata", sa.JSON(), nullable=False),
            sa.Column("config", sa.JSON(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("records_received", sa.BigInteger(), nullable=False),
            sa.Column("uploads_received", sa.Integer(), nullable=False),
            sa.Column("bytes_received", sa.BigInteger(), nullable=False),
            sa.Column("spool_base", sa.BigInteger(), nullable=False),
            sa.Column("final_hash", sa.String(length=64), nullable=True),
            sa.Column("error", sa.JSON(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("job_id"),
        )
        op.create_index("ix_ingest_sessions_tenant", "ingest_sessions", ["tenant"])

    if "ingest_batches" not in existing:
        op.create_table(
            "ingest_batches",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("batch_id", sa.String(length=32), nullable=False),
            sa.Column("session_id", sa.String(length=64), nullable=False),
            sa.Column("tenant", sa.Integer(), nullable=False),
            sa.Column("seq", sa.Integer(), nullable=False),
            sa.Column("first_index", sa.BigInteger(), nullable=False),
            sa.Column("record_count", sa.Integer(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("segment_key", sa.String(length=300), nullable=True),
            sa.Column("min_ts", sa.BigInteger(), nullable=True),
            sa.Column("max_ts", sa.BigInteger(), nullable=True),
            sa.Column("atoms_digest", sa.String(length=64), nullable=True),
            sa.Column("processing_ms", sa.Float(), nullable=True),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_ingest_batches_session_seq", "ingest_batches", ["session_id", "seq"], unique=True)
        op.create_index("ix_ingest_batches_state", "ingest_batches", ["state"])
        op.create_index("ix_ingest_batches_tenant", "ingest_batches", ["tenant"])

    if "ingest_schemas" not in existing:
        op.create_table(
            "ingest_schemas",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("tenant", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("definition", sa.JSON(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_ingest_schemas_tenant_name", "ingest_schemas", ["tenant", "name"], unique=True)

    if "race_sessions" not in existing:
        op.create_table(
            "race_sessions",
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("tenant", sa.Integer(), nullable=False),
            sa.Column("stream", sa.String(length=64), nullable=False),
            sa.Column("metadata", sa.JSON(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("archived_points", sa.Integer(), nullable=False),
            sa.Column("archived_bytes", sa.Integer(), nullable=False),
            sa.Column("archived_keys", sa.JSON(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("failed_attempts", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_race_sessions_stream", "race_sessions", ["stream"])
        # One open session per stream: a partial unique index, on both databases.
        op.create_index(
            "uq_race_sessions_open_stream",
            "race_sessions",
            ["stream"],
            unique=True,
            sqlite_where=sa.text("state = 'open'"),
            postgresql_where=sa.text("state = 'open'"),
        )


def downgrade() -> None:
    # Indexes go with their tables.
    for table in (
        "race_sessions",
        "ingest_schemas",
        "ingest_batches",
        "ingest_sessions",
        "challenge_messages",
        "challenges",
    ):
        op.drop_table(table)
