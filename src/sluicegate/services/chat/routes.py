"""``POST /api/chat/query/stream``: the route of :class:`ChatService`.

The body is checked before the stream opens (a 400 JSON body naming the field); then
the seed's named events: ``connected``, ``progress`` (``retrieval``, ``generation``),
``text``, ``audio`` (with ``enableTTS``), ``suggestions``, ``complete`` (or ``error``),
``close``. A client that goes away closes the events, which stops the model and the
voice (see :mod:`sluicegate.services.chat.answer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request, Response

from sluicegate.responses import read_body
from sluicegate.security.deps import AnyIdentity, rate_limited
from sluicegate.services.chat.service import parse_chat_request
from sluicegate.streaming.events import StreamReport, named_event_response, new_stream_id

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.services.chat.service import ChatService

__all__ = ["ChatRoutes"]

#: A query of 4,000 characters and its ids, in JSON, with room to spare.
BODY_LIMIT = 64 * 1024


class ChatRoutes:
    """The chat route over a :class:`ChatService`.

    Args:
        service: answers queries.
        clock: times streams and paces heartbeats.
        heartbeat: seconds of silence before a ``: ping`` comment (while the query waits
            for the local model); ``None`` sends none.
    """

    def __init__(self, service: ChatService, *, clock: Clock, heartbeat: float | None) -> None:
        self.router = APIRouter(tags=["chat"])

        @self.router.post(
            "/api/chat/query/stream",
            dependencies=[Depends(rate_limited("streaming_ip"))],
            summary="Answer a question from a chatbot's documents, as text and speech (SSE)",
            response_class=Response,
            responses={200: {"content": {"text/event-stream": {}}}},
        )
        async def chat_query(request: Request, response: Response, identity: AnyIdentity) -> Response:
            """Body ``{query, chatbotId, sessionId?, enableTTS?, audioFormat?: mp3|wav|opus}``; named events
            ``connected``, ``progress``, ``text``, ``audio``, ``suggestions``, ``complete``, ``close``."""
            parsed = parse_chat_request(await read_body(request, BODY_LIMIT))
            report = StreamReport(
                stream_id=new_stream_id("chat"),
                route="chat",
                what="chat query",
                failure="Chat failed",
                fields={"chatbotId": parsed.chatbot_id, "sessionId": parsed.session_id, "enableTTS": parsed.enable_tts},
                connected={"chatbotId": parsed.chatbot_id, "sessionId": parsed.session_id},
                tenant=identity.tenant,
            )
            return named_event_response(
                service.stream(identity.tenant, parsed), report, clock=clock, heartbeat=heartbeat, response=response
            )
