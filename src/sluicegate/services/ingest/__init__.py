"""Ingestion sessions and jobs: the second seed's ``/api/streaming`` API."""

from __future__ import annotations

from sluicegate.services.ingest.routes import IngestRoutes
from sluicegate.services.ingest.service import IngestConfig, IngestService

__all__ = ["IngestConfig", "IngestRoutes", "IngestService"]
