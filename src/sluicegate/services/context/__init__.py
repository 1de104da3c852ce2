"""Chatbot context: uploaded documents, chunked and embedded (``/api/context/*``)."""

from sluicegate.services.context.routes import ContextRoutes
from sluicegate.services.context.service import ContextService

__all__ = ["ContextRoutes", "ContextService"]
