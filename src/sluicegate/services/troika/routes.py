"""``POST /api/troika/intelligent-chat/stream``: the route of :class:`TroikaService`.

The body is checked before the stream opens (a 400 JSON body naming the field); then
the seed's named events (see :mod:`sluicegate.services.troika.service`). A client that
goes away closes the events, which stops the model and the voice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request, Response

from sluicegate.responses import read_body
from sluicegate.security.deps import AnyIdentity, rate_limited
from sluicegate.services.troika.models import AGENT_BODY_BYTES, parse_agent_request
from sluicegate.streaming.events import StreamReport, named_event_response, new_stream_id

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.services.troika.service import TroikaService

__all__ = ["TroikaRoutes"]


class TroikaRoutes:
    """The sales agent's route.

    Args:
        service: answers shoppers.
        clock: times streams and paces heartbeats.
        heartbeat: seconds of silence before a ``: ping`` comment; ``None`` sends none.
    """

    def __init__(self, service: TroikaService, *, clock: Clock, heartbeat: float | None) -> None:
        self.router = APIRouter(tags=["troika"])

        @self.router.post(
            "/api/troika/intelligent-chat/stream",
            dependencies=[Depends(rate_limited("streaming_ip"))],
            summary="The sales agent: intent, market, products and a grounded answer with speech (SSE)",
            response_class=Response,
            responses={200: {"content": {"text/event-stream": {}}}},
        )
        async def intelligent_chat(request: Request, response: Response, identity: AnyIdentity) -> Response:
            """Body ``{query, sessionId?, catalog?, chatbotId?, enableTTS?, audioFormat?}``; named events
            ``connected``, ``progress``, ``intent``, ``market``, ``results``, ``text``, ``audio``,
            ``suggestions``, ``complete``, ``close``."""
            parsed = parse_agent_request(await read_body(request, AGENT_BODY_BYTES))
            report = StreamReport(
                stream_id=new_stream_id("troika"),
                route="troika",
                what="intelligent chat",
                failure="Intelligent chat failed",
                fields={"catalog": parsed.catalog, "sessionId": parsed.sessionId, "enableTTS": parsed.enableTTS},
                connected={"catalog": parsed.catalog, "sessionId": parsed.sessionId},
                tenant=identity.tenant,
            )
            return named_event_response(
                service.stream(identity.tenant, parsed), report, clock=clock, heartbeat=heartbeat, response=response
            )
