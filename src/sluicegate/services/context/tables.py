"""The context tables: uploaded documents of a chatbot and their chunks.

A document is stored whole or not at all (one transaction: the document row and every
chunk). ``content_hash`` (SHA-256 of the uploaded bytes) is unique per (tenant,
chatbot): the same content uploaded again is recognised and not stored twice. Chunks
carry their text, page, character offsets into the extracted text, token count and
embedding (float32, little-endian), and the ``seq`` of the index version that wrote them
(:mod:`sluicegate.services.retrieval.versions`, kind ``chatbot``).
"""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 -- SQLAlchemy reads annotations at run time

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sluicegate.engines.store import Base, UTCDateTime
from sluicegate.services.search.tables import AutoKey

__all__ = ["ContextChunkRow", "ContextDocumentRow"]


class ContextDocumentRow(Base):
    __tablename__ = "context_documents"
    __table_args__ = (
        Index("uq_context_documents_hash", "tenant", "chatbot_id", "content_hash", unique=True),
        Index("ix_context_documents_chatbot", "tenant", "chatbot_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer)
    chatbot_id: Mapped[str] = mapped_column(String(100))
    file_name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    content_hash: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    chunks: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    characters: Mapped[int] = mapped_column(Integer)
    pages: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ContextChunkRow(Base):
    __tablename__ = "context_chunks"
    __table_args__ = (Index("ix_context_chunks_chatbot_seq", "tenant", "chatbot_id", "seq"),)

    pk: Mapped[int] = mapped_column(AutoKey, primary_key=True, autoincrement=True)
    document_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("context_documents.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[int] = mapped_column(Integer)
    chatbot_id: Mapped[str] = mapped_column(String(100))
    seq: Mapped[int] = mapped_column(BigInteger)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(Integer, nullable=True)
    start_offset: Mapped[int] = mapped_column(Integer)
    end_offset: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
