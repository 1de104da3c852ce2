"""Product catalogs and the two product searches (``/api/products/*``, ``/aza/search/stream``)."""

from sluicegate.services.search.routes import SearchRoutes
from sluicegate.services.search.service import SearchService

__all__ = ["SearchRoutes", "SearchService"]
