"""SKELETON (being written): the routes of :class:`ChatService`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.services.chat.service import ChatService

__all__ = ["ChatRoutes"]


class ChatRoutes:
    def __init__(self, service: ChatService, *, clock: Clock, heartbeat: float | None) -> None:
        self.router = APIRouter(tags=["chat"])
