"""SKELETON (being written): the routes of :class:`ContextService`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.services.context.service import ContextService

__all__ = ["ContextRoutes"]


class ContextRoutes:
    def __init__(self, service: ContextService, *, clock: Clock, heartbeat: float | None) -> None:
        self.router = APIRouter(tags=["context"])
