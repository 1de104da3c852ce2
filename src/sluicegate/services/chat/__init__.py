"""Chat over a chatbot's context, with speech (``/api/chat/query/stream``)."""

from sluicegate.services.chat.routes import ChatRoutes
from sluicegate.services.chat.service import ChatService

__all__ = ["ChatRoutes", "ChatService"]
