"""Generation streams: the fifth seed's ``POST /api/stream``, ``GET /api/models`` and a WebSocket twin."""

from sluicegate.services.generate.routes import GenerateRoutes
from sluicegate.services.generate.service import GenerateService, GenerationRun

__all__ = ["GenerateRoutes", "GenerateService", "GenerationRun"]
