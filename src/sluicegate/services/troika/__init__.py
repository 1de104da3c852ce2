"""The sales agent: intents, market intelligence, grounded answers (``/api/troika/*``)."""

from sluicegate.services.troika.routes import TroikaRoutes
from sluicegate.services.troika.service import TroikaService

__all__ = ["TroikaRoutes", "TroikaService"]
