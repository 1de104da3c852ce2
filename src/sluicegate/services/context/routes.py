"""The routes of :class:`ContextService`.

- ``POST /api/context/upload-file/stream``: multipart ``file`` and ``chatbotId``, optional
  ``chunkSize`` and ``chunkOverlap``; the seed's named-event stream (stream ids
  ``context-upload-<hex>``). A request that is wrong before any work (not multipart, no
  file, no ``chatbotId``, bad chunk numbers) is a 400 JSON body, and a body over the limit
  a 413, both before the stream: the declared ``Content-Length`` is checked first, and the
  body is counted while it is read, so an undeclared or lying body stops at the limit.
- ``GET /api/context/documents?chatbotId=``: the caller's documents.
- ``DELETE /api/context/documents/{id}``: 404 when the caller's tenant has no such document.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from sluicegate.errors import APIError
from sluicegate.responses import json_response
from sluicegate.security.deps import AnyIdentity, rate_limited
from sluicegate.streaming.events import StreamReport, named_event_response, new_stream_id

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from starlette.datastructures import FormData

    from sluicegate.clock import Clock
    from sluicegate.services.context.service import ContextService

__all__ = ["ContextRoutes", "read_form"]

#: Multipart framing and the small fields around the file: a body may be this much over the file limit.
FORM_SLACK = 64 * 1024


async def _bounded(request: Request, limit: int) -> AsyncGenerator[bytes]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError.payload_too_large(f"The upload is over the limit of {limit} bytes", limit=limit)
        yield chunk


async def read_form(request: Request, file_limit: int) -> FormData:
    """The multipart form of ``request``, at most ``file_limit`` bytes of file (plus framing).

    Raises:
        APIError: 400 when the body is not a multipart form, 413 when it is too large.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise APIError.invalid_argument("Send the file as multipart/form-data (fields 'file' and 'chatbotId')")
    limit = file_limit + FORM_SLACK
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError.payload_too_large(f"The upload is over the limit of {file_limit} bytes", limit=file_limit)
    parser = MultiPartParser(
        request.headers, _bounded(request, limit), max_files=1, max_fields=16, max_part_size=FORM_SLACK
    )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise APIError.invalid_argument(f"The multipart form cannot be read: {exc.message}") from None


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


class ContextRoutes:
    """The context routes over a :class:`ContextService`.

    Args:
        service: stores documents and streams uploads.
        clock: stamps the stream's events.
        heartbeat: seconds of silence before a ``: ping`` comment; ``None`` sends none.
    """

    def __init__(self, service: ContextService, *, clock: Clock, heartbeat: float | None) -> None:
        self.service = service
        self.clock = clock
        self.heartbeat = heartbeat
        self.router = APIRouter(tags=["context"])
        self._routes()

    def _routes(self) -> None:
        service = self.service

        @self.router.post(
            "/api/context/upload-file/stream",
            dependencies=[Depends(rate_limited("streaming_ip"))],
            summary="Upload a context document, streaming its processing as Server-Sent Events",
            response_class=Response,
            responses={200: {"content": {"text/event-stream": {}}}},
        )
        async def upload(request: Request, response: Response, identity: AnyIdentity) -> Response:
            """Multipart ``file`` and ``chatbotId`` (``chunkSize``, ``chunkOverlap`` in tokens and
            ``tokenCounts`` (``cl100k_base``) optional);
            ``progress`` steps ``validation``, ``extraction``, ``chunking``, ``embedding``, ``storing``,
            then ``complete`` with the ``documentId`` (``duplicate: true`` for content already uploaded)."""
            form = await read_form(request, service.max_file_bytes)
            try:
                upload_file = form.get("file")
                data = await upload_file.read() if isinstance(upload_file, UploadFile) else None
                checked = service.check_upload(
                    identity.tenant,
                    chatbot_id=_text(form, "chatbotId"),
                    file_name=upload_file.filename if isinstance(upload_file, UploadFile) else None,
                    data=data,
                    chunk_size=_text(form, "chunkSize"),
                    chunk_overlap=_text(form, "chunkOverlap"),
                    token_counts=_text(form, "tokenCounts"),
                )
            finally:
                with contextlib.suppress(Exception):
                    await form.close()
            report = StreamReport(
                stream_id=new_stream_id("context-upload"),
                route="context_upload",
                what="context upload",
                failure="Upload failed",
                fields={"chatbotId": checked.chatbot_id, "fileName": checked.file_name, "bytes": len(checked.data)},
                tenant=identity.tenant,
            )
            return named_event_response(
                service.upload(checked), report, clock=self.clock, heartbeat=self.heartbeat, response=response
            )

        @self.router.get("/api/context/documents", summary="The caller's context documents")
        async def documents(
            identity: AnyIdentity, chatbot_id: str | None = Query(None, alias="chatbotId", max_length=100)
        ) -> Response:
            """``{"documents": [{id, chatbotId, fileName, contentType, size, chunks, tokens, characters, pages,
            createdAt}], "total"}``, newest first; only the given chatbot's with ``chatbotId``."""
            found = await service.documents(identity.tenant, chatbot_id)
            return json_response({"documents": found, "total": len(found), "chatbotId": chatbot_id})

        @self.router.delete("/api/context/documents/{document_id}", summary="Delete a context document")
        async def delete_document(document_id: str, identity: AnyIdentity) -> Response:
            """Deletes the document and its chunks; 404 when the caller's tenant has no such document."""
            return json_response(await service.delete(identity.tenant, document_id))
