"""The catalog tables: one row per product, a full-text index beside it.

``products`` holds each product as imported (``data``), the text that is searched
(``search_text``: name, description, category, tags, colours, attributes), the fields
filters read, and its embedding (float32, little-endian). A deleted product stays as a
tombstone (``deleted``) carrying the ``seq`` of its deletion, so other nodes learn of it
(:mod:`sluicegate.services.retrieval.versions`).

The full-text index is the database's own: on SQLite an FTS5 table ``products_fts``
over ``search_text`` (external content, kept by triggers, bm25); on PostgreSQL a
generated ``search_tsv`` column (``to_tsvector('english', search_text)``) with a GIN
index. Both are made by the migration, not by the ORM.
"""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 -- SQLAlchemy reads annotations at run time
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sluicegate.engines.store import Base, UTCDateTime

__all__ = ["ProductRow"]

#: An auto-incrementing key: BIGINT on PostgreSQL, SQLite's INTEGER PRIMARY KEY (the rowid).
AutoKey = BigInteger().with_variant(Integer, "sqlite")


class ProductRow(Base):
    __tablename__ = "products"
    __table_args__ = (
        Index("uq_products_tenant_catalog_id", "tenant", "catalog", "id", unique=True),
        Index("ix_products_tenant_catalog_seq", "tenant", "catalog", "seq"),
    )

    pk: Mapped[int] = mapped_column(AutoKey, primary_key=True, autoincrement=True)
    tenant: Mapped[int] = mapped_column(Integer)
    catalog: Mapped[str] = mapped_column(String(100))
    id: Mapped[str] = mapped_column(String(200))
    seq: Mapped[int] = mapped_column(BigInteger)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(200), nullable=True)
    price: Mapped[float | None] = mapped_column(Float, nullable=True)
    stock: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    search_text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
