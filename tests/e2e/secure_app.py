"""A test-only app on the real security stack: API keys, bearer tokens, limits, tenants."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel

from sluicegate.app import create_app as create_sluicegate_app
from sluicegate.security import Identity, owned_by
from sluicegate.security.deps import AnyIdentity, ApiKeyIdentity, rate_limited
from sluicegate.streaming import StreamOut, StreamRouter

if TYPE_CHECKING:
    from collections.abc import Iterator

streams = StreamRouter(prefix="/secure")
router = APIRouter(prefix="/secure")


@dataclass
class Note:
    id: int
    tenant: int
    text: str


notes: dict[int, Note] = {}
ids: Iterator[int] = itertools.count(1)


class NoteIn(BaseModel):
    text: str


class NoteHandshake(BaseModel):
    note_id: int


def _identity(identity: Identity) -> dict[str, Any]:
    return {
        "subject": identity.subject,
        "tenant": identity.tenant,
        "role": identity.role,
        "scopes": sorted(identity.scopes),
        "method": identity.method,
    }


@streams.stream_out("/whoami", auth=True)
async def whoami(stream: StreamOut[Any]) -> None:
    """Send the caller's identity, then end."""
    await stream.send(_identity(stream.auth))


@streams.stream_out("/notes/{note_id}/watch", auth=True)
async def watch_note(handshake: NoteHandshake, stream: StreamOut[Any]) -> None:
    """Send a note of the caller's tenant."""
    note = owned_by(stream.auth, notes.get(handshake.note_id), "Note not found")
    await stream.send({"id": note.id, "text": note.text})


@streams.stream_out("/limited", rate_limit="streaming_ip")
async def limited(stream: StreamOut[Any]) -> None:
    """A streaming route under the per-IP limit."""
    await stream.send({"ok": True})


@router.post("/notes", status_code=201)
async def create_note(body: NoteIn, identity: AnyIdentity) -> dict[str, int]:
    note = Note(next(ids), identity.tenant, body.text)
    notes[note.id] = note
    return {"id": note.id}


@router.get("/notes/{note_id}")
async def read_note(note_id: int, identity: AnyIdentity) -> dict[str, Any]:
    note = owned_by(identity, notes.get(note_id), "Note not found", noteId=note_id)
    return {"id": note.id, "text": note.text, "tenant": note.tenant}


@router.get("/tenant-limited", dependencies=[Depends(rate_limited("tenant"))])
async def tenant_limited(identity: AnyIdentity) -> dict[str, int]:
    return {"tenant": identity.tenant}


@router.post("/generate-limited", dependencies=[Depends(rate_limited("generate"))])
async def generate_limited(identity: ApiKeyIdentity) -> dict[str, str]:
    return {"role": identity.role}


def create_app() -> FastAPI:
    return create_sluicegate_app(streams=[streams], routers=[router])
