"""Tables, request bodies and wire records of the ingestion API (the second seed)."""

from __future__ import annotations

import enum
from datetime import datetime  # noqa: TC003 -- SQLAlchemy and pydantic read annotations at run time
from typing import Any

import msgspec
from pydantic import BaseModel, Field
from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sluicegate.engines.store import Base, UTCDateTime

__all__ = [
    "AudioBuffer",
    "BatchRow",
    "BatchState",
    "EndRequest",
    "IngestSessionRow",
    "SchemaRow",
    "SessionState",
    "SessionType",
    "StartRequest",
    "TelemetryRecord",
    "VideoFrame",
]


class SessionType(enum.StrEnum):
    TELEMETRY = "telemetry"
    VIDEO = "video"
    AUDIO = "audio"


class SessionState(enum.StrEnum):
    """The seed's seven states."""

    INITIALIZING = "initializing"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Which states may follow which (the seed's diagram, plus resume from pause, and back from
#: failed to completing when a batch of the dead-letter queue is retried by hand).
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.INITIALIZING: frozenset({SessionState.ACTIVE, SessionState.PAUSED, SessionState.CANCELLED}),
    SessionState.ACTIVE: frozenset(
        {SessionState.PAUSED, SessionState.COMPLETING, SessionState.FAILED, SessionState.CANCELLED}
    ),
    SessionState.PAUSED: frozenset(
        {SessionState.ACTIVE, SessionState.COMPLETING, SessionState.FAILED, SessionState.CANCELLED}
    ),
    SessionState.COMPLETING: frozenset({SessionState.COMPLETED, SessionState.FAILED, SessionState.CANCELLED}),
    SessionState.COMPLETED: frozenset(),
    SessionState.FAILED: frozenset({SessionState.COMPLETING}),
    SessionState.CANCELLED: frozenset(),
}

FINAL_STATES = frozenset({SessionState.COMPLETED, SessionState.FAILED, SessionState.CANCELLED})


class BatchState(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    RETRYING = "retrying"
    PROCESSED = "processed"
    DEAD = "dead"  # in the dead-letter queue


class IngestSessionRow(Base):
    __tablename__ = "ingest_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[int] = mapped_column(Integer, index=True)
    session_type: Mapped[str] = mapped_column(String(16))
    session_name: Mapped[str] = mapped_column(String(200))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Counters of the session's log, written when the log is deleted (the session retired).
    records_received: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)
    final_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The identity of the session log that holds its records (SessionLog.identity).
    log: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Whether the session is done with for good: its log deleted, its counters above final.
    retired: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class BatchRow(Base):
    """One batch: its place in the session, its segment in the object store and its time range."""

    __tablename__ = "ingest_batches"
    __table_args__ = (Index("ix_ingest_batches_session_seq", "session_id", "seq", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[int] = mapped_column(Integer, index=True)
    seq: Mapped[int] = mapped_column(Integer)
    first_index: Mapped[int] = mapped_column(BigInteger)
    record_count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    segment_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    min_ts: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_ts: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    atoms_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    processing_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SchemaRow(Base):
    __tablename__ = "ingest_schemas"
    __table_args__ = (Index("ix_ingest_schemas_tenant_name", "tenant", "name", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


# -- request bodies -----------------------------------------------------------------------


class StartRequest(BaseModel):
    """``POST /api/streaming/sessions/start`` (the seed's fields, plus the batch options)."""

    sessionType: SessionType
    sessionName: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)
    batchSize: int = Field(1000, ge=1, le=100_000)
    maxBatchDelayMs: int = Field(5000, ge=0, le=3_600_000)
    maxConcurrentBatches: int = Field(5, ge=1, le=64)
    maxRetries: int = Field(3, ge=0, le=20)
    retryDelayMs: int = Field(1000, ge=0, le=600_000)
    retryBackoffMultiplier: float = Field(2.0, ge=1.0, le=10.0)
    schemaName: str | None = Field(None, max_length=200)
    tenantId: int | None = None
    # The second seed's media fields: checked by sluicegate.services.media.config (its
    # 400s name the field), so any JSON value is let through here.
    frameExtractionMode: Any = None
    frameInterval: Any = None
    frameRateFps: Any = None
    resolution: Any = None
    compressionQuality: Any = None
    sceneThreshold: Any = None
    segmentationMode: Any = None
    silenceThresholdDb: Any = None
    minSegmentDurationMs: Any = None
    maxSegmentDurationMs: Any = None


class EndRequest(BaseModel):
    waitForCompletion: bool = False
    timeoutMs: int = Field(30_000, ge=0, le=600_000)


# -- wire records (decoded with msgspec: the hot path) -----------------------------------


class TelemetryRecord(msgspec.Struct, forbid_unknown_fields=False):
    timestamp: str
    values: dict[str, Any] = {}


class VideoFrame(msgspec.Struct, forbid_unknown_fields=False):
    frameNumber: int
    timestamp: str
    imageData: str
    format: str
    width: int | None = None
    height: int | None = None


class AudioBuffer(msgspec.Struct, forbid_unknown_fields=False):
    bufferNumber: int
    timestamp: str
    audioData: str
    format: str
    sampleRate: int | None = None
    channels: int | None = None
    bitDepth: int | None = None
