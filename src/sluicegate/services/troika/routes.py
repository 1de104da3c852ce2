"""SKELETON (being written): the routes of :class:`TroikaService`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.services.troika.service import TroikaService

__all__ = ["TroikaRoutes"]


class TroikaRoutes:
    def __init__(self, service: TroikaService, *, clock: Clock, heartbeat: float | None) -> None:
        self.router = APIRouter(tags=["troika"])
