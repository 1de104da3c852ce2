"""The node that holds a race session (``SLUICEGATE_NODE_URL``), for several nodes.

Revision ID: 40a6ef5129b5
Revises: 1e4ecd3526ea
Create Date: 2026-11-27

Sessions from before have none: they belong to a single node without a node URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "40a6ef5129b5"
down_revision: str | Sequence[str] | None = "1e4ecd3526ea"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("race_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("race_sessions", schema=None) as batch_op:
        batch_op.drop_column("owner")
