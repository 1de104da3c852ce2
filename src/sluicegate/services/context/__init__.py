"""Chatbot context: uploaded documents, chunked and embedded (``/api/context/*``).

- :mod:`~sluicegate.services.context.sniff`: the type of a file, by its bytes;
- :mod:`~sluicegate.services.context.extract`: its text (pypdf, python-docx, CSV, JSON);
- :mod:`~sluicegate.services.context.chunking`: sentence-aware chunks counted in tokens (pure);
- :mod:`~sluicegate.services.context.index`: retrieval over a chatbot's chunks;
- :mod:`~sluicegate.services.context.service`: uploads, documents, retrieval;
- :mod:`~sluicegate.services.context.routes`: the HTTP routes.
"""

from sluicegate.services.context.index import RetrievedChunk
from sluicegate.services.context.routes import ContextRoutes
from sluicegate.services.context.service import ContextService

__all__ = ["ContextRoutes", "ContextService", "RetrievedChunk"]
