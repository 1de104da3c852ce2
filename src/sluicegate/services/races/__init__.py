"""Race data collection (the first seed's ``POST /api/streams/races/:stream/data``), made durable."""

from __future__ import annotations

from sluicegate.services.races.routes import RaceRoutes
from sluicegate.services.races.service import RaceConfig, RaceService

__all__ = ["RaceConfig", "RaceRoutes", "RaceService"]
