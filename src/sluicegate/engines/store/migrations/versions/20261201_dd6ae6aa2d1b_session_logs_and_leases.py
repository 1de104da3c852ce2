"""Sessions on a shared log: leases, the log of each session, race archive cuts.

Revision ID: dd6ae6aa2d1b
Revises: 40a6ef5129b5
Create Date: 2026-12-01

No node holds a session any more (``owner`` goes): its data is in a session log
(``log`` names which), and the one process that works on it holds its lease. Finished
ingestion sessions from before are retired; unfinished ones keep ``log`` empty: their
records are in the spool format of the earlier version, which this one does not read
(docs/deployment.md, "Upgrading").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "dd6ae6aa2d1b"
down_revision: str | Sequence[str] | None = "40a6ef5129b5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key"),
    )
    with op.batch_alter_table("ingest_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("retired", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index(batch_op.f("ix_ingest_sessions_retired"), ["retired"], unique=False)
        batch_op.drop_column("spool_base")
        batch_op.drop_column("uploads_received")
        batch_op.drop_column("owner")
    op.execute(
        sa.text(
            "UPDATE ingest_sessions SET retired = :yes WHERE state IN ('completed', 'failed', 'cancelled')"
        ).bindparams(yes=True)
    )
    with op.batch_alter_table("race_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("cut_seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cut_end", sa.BigInteger(), nullable=True))
        batch_op.alter_column(
            "archived_points", existing_type=sa.INTEGER(), type_=sa.BigInteger(), existing_nullable=False
        )
        batch_op.alter_column(
            "archived_bytes", existing_type=sa.INTEGER(), type_=sa.BigInteger(), existing_nullable=False
        )
        batch_op.drop_column("owner")


def downgrade() -> None:
    with op.batch_alter_table("race_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.VARCHAR(length=200), nullable=True))
        batch_op.alter_column(
            "archived_bytes", existing_type=sa.BigInteger(), type_=sa.INTEGER(), existing_nullable=False
        )
        batch_op.alter_column(
            "archived_points", existing_type=sa.BigInteger(), type_=sa.INTEGER(), existing_nullable=False
        )
        batch_op.drop_column("cut_end")
        batch_op.drop_column("cut_seq")
        batch_op.drop_column("log")
    with op.batch_alter_table("ingest_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.VARCHAR(length=200), nullable=True))
        batch_op.add_column(sa.Column("uploads_received", sa.INTEGER(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("spool_base", sa.BIGINT(), nullable=False, server_default="0"))
        batch_op.drop_index(batch_op.f("ix_ingest_sessions_retired"))
        batch_op.drop_column("retired")
        batch_op.drop_column("log")
    op.drop_table("leases")
