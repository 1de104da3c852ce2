"""Stream-in: an upload in chunks; the handler's return value is the response.

Over WebSocket, send ``{"data": "...", "done": false}`` messages and a last one with
``"done": true``; the server answers with the result and closes. Over HTTP, POST
the same messages as NDJSON::

    sluicegate serve --app examples.upload:create_app
    printf '{"data":"hello "}\n{"data":"world","done":true}\n' | \
        curl -s --data-binary @- -H 'content-type: application/x-ndjson' http://127.0.0.1:8000/upload
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from sluicegate.app import create_app as create_sluicegate_app
from sluicegate.streaming import StreamIn, StreamRouter

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sluicegate.settings import Settings

streams = StreamRouter()


class UploadHandshake(BaseModel):
    name: str = Field("upload", min_length=1, max_length=200, description="A name for the upload.")


class Chunk(BaseModel):
    data: str
    done: bool = False


class UploadResult(BaseModel):
    success: bool
    name: str
    chunks: int
    bytes: int
    sha256: str


@streams.stream_in("/upload")
async def upload(handshake: UploadHandshake, stream: StreamIn[Chunk]) -> UploadResult:
    """Receive chunks until one says ``done``; answer with their count, size and SHA-256."""
    digest = hashlib.sha256()
    chunks = size = 0
    async for chunk in stream:
        encoded = chunk.data.encode()
        digest.update(encoded)
        chunks += 1
        size += len(encoded)
        if chunk.done:
            break
    return UploadResult(success=True, name=handshake.name, chunks=chunks, bytes=size, sha256=digest.hexdigest())


def create_app(settings: Settings | None = None) -> FastAPI:
    """The example app: Sluicegate with the upload stream mounted."""
    return create_sluicegate_app(settings, streams=[streams])
