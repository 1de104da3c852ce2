"""SKELETON (being written): the routes of :class:`SearchService`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.services.search.service import SearchService

__all__ = ["SearchRoutes"]


class SearchRoutes:
    def __init__(self, service: SearchService, *, clock: Clock, heartbeat: float | None, max_import_bytes: int) -> None:
        self.router = APIRouter(tags=["search"])
