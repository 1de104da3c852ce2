"""The fourth seed: product catalogs, chatbot context, chat memory, index versions.

Revision ID: 5c7e2f0a9b31
Revises: dd6ae6aa2d1b
Create Date: 2026-12-01

Besides the tables, each database gets its own full-text index over
``products.search_text``: an FTS5 table (external content, kept by triggers) on SQLite,
a generated ``tsvector`` column with a GIN index on PostgreSQL. Neither is in the ORM
models; ``migrate.include_object`` keeps autogenerate from proposing to drop them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "5c7e2f0a9b31"
down_revision: str | Sequence[str] | None = "dd6ae6aa2d1b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_AUTO_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_SQLITE_FTS = (
    "CREATE VIRTUAL TABLE products_fts USING fts5("
    "search_text, content='products', content_rowid='pk', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER products_fts_insert AFTER INSERT ON products BEGIN "
    "INSERT INTO products_fts(rowid, search_text) VALUES (new.pk, new.search_text); END",
    "CREATE TRIGGER products_fts_delete AFTER DELETE ON products BEGIN "
    "INSERT INTO products_fts(products_fts, rowid, search_text) VALUES ('delete', old.pk, old.search_text); END",
    "CREATE TRIGGER products_fts_update AFTER UPDATE OF search_text ON products BEGIN "
    "INSERT INTO products_fts(products_fts, rowid, search_text) VALUES ('delete', old.pk, old.search_text); "
    "INSERT INTO products_fts(rowid, search_text) VALUES (new.pk, new.search_text); END",
)

_POSTGRES_FTS = (
    "ALTER TABLE products ADD COLUMN search_tsv tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english', search_text)) STORED",
    "CREATE INDEX ix_products_search_tsv ON products USING gin (search_tsv)",
)


def upgrade() -> None:
    op.create_table(
        "index_versions",
        sa.Column("tenant", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "kind", "name"),
    )
    op.create_table(
        "products",
        sa.Column("pk", _AUTO_KEY, autoincrement=True, nullable=False),
        sa.Column("tenant", sa.Integer(), nullable=False),
        sa.Column("catalog", sa.String(length=100), nullable=False),
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("category", sa.String(length=200), nullable=True),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("stock", sa.Integer(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("uq_products_tenant_catalog_id", "products", ["tenant", "catalog", "id"], unique=True)
    op.create_index("ix_products_tenant_catalog_seq", "products", ["tenant", "catalog", "seq"], unique=False)
    op.create_table(
        "context_documents",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.Integer(), nullable=False),
        sa.Column("chatbot_id", sa.String(length=100), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("characters", sa.Integer(), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "uq_context_documents_hash", "context_documents", ["tenant", "chatbot_id", "content_hash"], unique=True
    )
    op.create_index("ix_context_documents_chatbot", "context_documents", ["tenant", "chatbot_id"], unique=False)
    op.create_table(
        "context_chunks",
        sa.Column("pk", _AUTO_KEY, autoincrement=True, nullable=False),
        sa.Column("document_id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.Integer(), nullable=False),
        sa.Column("chatbot_id", sa.String(length=100), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("start_offset", sa.Integer(), nullable=False),
        sa.Column("end_offset", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["document_id"], ["context_documents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_context_chunks_document_id", "context_chunks", ["document_id"], unique=False)
    op.create_index("ix_context_chunks_chatbot_seq", "context_chunks", ["tenant", "chatbot_id", "seq"], unique=False)
    op.create_table(
        "chat_turns",
        sa.Column("pk", _AUTO_KEY, autoincrement=True, nullable=False),
        sa.Column("tenant", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=100), nullable=False),
        sa.Column("route", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_chat_turns_session", "chat_turns", ["tenant", "session_id", "pk"], unique=False)
    statements = _POSTGRES_FTS if op.get_bind().dialect.name == "postgresql" else _SQLITE_FTS
    for statement in statements:
        op.execute(sa.text(statement))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for trigger in ("products_fts_insert", "products_fts_delete", "products_fts_update"):
            op.execute(sa.text(f"DROP TRIGGER IF EXISTS {trigger}"))
        op.execute(sa.text("DROP TABLE IF EXISTS products_fts"))
    op.drop_index("ix_chat_turns_session", table_name="chat_turns")
    op.drop_table("chat_turns")
    op.drop_index("ix_context_chunks_chatbot_seq", table_name="context_chunks")
    op.drop_index("ix_context_chunks_document_id", table_name="context_chunks")
    op.drop_table("context_chunks")
    op.drop_index("ix_context_documents_chatbot", table_name="context_documents")
    op.drop_index("uq_context_documents_hash", table_name="context_documents")
    op.drop_table("context_documents")
    op.drop_index("ix_products_tenant_catalog_seq", table_name="products")
    op.drop_index("uq_products_tenant_catalog_id", table_name="products")
    op.drop_table("products")
    op.drop_table("index_versions")
