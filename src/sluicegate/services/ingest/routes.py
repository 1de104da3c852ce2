"""The ``/api/streaming`` routes of the second seed, over :class:`IngestService`.

Every route needs a bearer token (or an API key; the tenant comes from it) and counts
against the tenant's rate limit (``SLUICEGATE_RATE_LIMIT_TENANT``, the seed's 1,000
requests a minute, with the seed's 429 body).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse

from sluicegate.errors import APIError
from sluicegate.responses import json_response, read_body
from sluicegate.security.deps import AnyIdentity, rate_limited
from sluicegate.services.forward import Forwarded, Forwarder
from sluicegate.services.ingest.models import (
    FINAL_STATES,
    BatchState,
    EndRequest,
    IngestSessionRow,
    SessionState,
    StartRequest,
)
from sluicegate.services.ingest.service import IngestService, LiveSession, iso
from sluicegate.services.ingest.validation import timestamp_us
from sluicegate.services.relay import follow, memo_frame
from sluicegate.streaming import Frame, StreamInOut, StreamOut, StreamRouter

if TYPE_CHECKING:
    from datetime import datetime

    from sluicegate.engines.broker import BrokerMessage, Gap

__all__ = ["IngestRoutes"]

PHASES = ("upload", "validation", "atomization", "indexing", "completion")


class SessionHandshake(BaseModel):
    sessionId: str = Field(max_length=64)


def _urls(request: Request, session_id: str) -> dict[str, str]:
    base = str(request.base_url).rstrip("/") + "/api/streaming/sessions/" + session_id
    ws_base = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
    return {
        "uploadUrl": f"{base}/upload",
        "statusUrl": f"{base}/status",
        "sseUrl": f"{base}/events",
        "websocketUrl": f"{ws_base}/ws",
    }


def _sse_frame(message: BrokerMessage) -> Frame:
    def build(m: BrokerMessage) -> Frame:
        fields = orjson.loads(m.data)
        event = fields.pop("type")
        return Frame(orjson.dumps(fields), event=event, id=m.position)

    return memo_frame(message, "ingest.sse", build)


def _ws_frame(message: BrokerMessage) -> Frame:
    return memo_frame(message, "ingest.ws", lambda m: Frame(m.data))


def _sse_gap(gap: Gap) -> Frame:
    return Frame(orjson.dumps({"after": gap.after, "resumedFrom": gap.resumed_from, "reason": gap.reason}), event="gap")


def _ws_gap(gap: Gap) -> Frame:
    body = {"type": "gap", "after": gap.after, "resumedFrom": gap.resumed_from, "reason": gap.reason}
    return Frame(orjson.dumps(body))


def _ms(later: datetime | None, earlier: datetime) -> int:
    return round(((later or earlier) - earlier).total_seconds() * 1000) if later else 0


class IngestRoutes:
    """Routes and stream endpoints of the ingestion API."""

    def __init__(self, service: IngestService, forwarder: Forwarder | None = None) -> None:
        self.service = service
        self.forwarder = forwarder
        limited = [Depends(rate_limited("tenant"))]
        self.router = APIRouter(prefix="/api/streaming", tags=["streaming"], dependencies=limited)
        self.streams = StreamRouter(prefix="/api/streaming", tags=("streaming",))
        self._sessions()
        self._jobs()
        self._extras()
        self._stream_routes()

    # -- shapes ------------------------------------------------------------------------

    def _statistics(self, session: LiveSession | IngestSessionRow) -> dict[str, Any]:
        now = self.service.clock.now()
        if isinstance(session, IngestSessionRow):
            duration = _ms(session.finished_at or now, session.created_at)
            return {
                "totalRecordsReceived": session.records_received,
                "totalBatchesReceived": None,
                "totalAtomsCreated": None,
                "averageBatchProcessingTimeMs": None,
                "dataReceivedBytes": session.bytes_received,
                "sessionDurationMs": duration,
            }
        processed = session.batches_processed
        return {
            "totalRecordsReceived": session.records_received,
            "totalBatchesReceived": session.batches_cut,
            "totalAtomsCreated": session.atoms_created,
            "averageBatchProcessingTimeMs": round(session.processing_ms_total / processed, 3) if processed else 0,
            "dataReceivedBytes": session.bytes_received,
            "sessionDurationMs": _ms(session.finished_at or now, session.created_at),
            "recordsQueued": session.records_queued,
        }

    async def _finished_counts(self, row: IngestSessionRow) -> dict[str, Any]:
        from sqlalchemy import func, select

        from sluicegate.services.ingest.models import BatchRow

        async with self.service.store.session() as db:
            batches, atoms, total_ms = (
                await db.execute(
                    select(
                        func.count(BatchRow.id),
                        func.coalesce(func.sum(BatchRow.record_count), 0),
                        func.coalesce(func.sum(BatchRow.processing_ms), 0.0),
                    ).where(BatchRow.session_id == row.id, BatchRow.state == BatchState.PROCESSED.value)
                )
            ).one()
        stats = self._statistics(row)
        stats.update(
            totalBatchesReceived=batches,
            totalAtomsCreated=atoms,
            averageBatchProcessingTimeMs=round(float(total_ms or 0) / batches, 3) if batches else 0,
        )
        return stats

    async def _status(self, session: LiveSession | IngestSessionRow) -> dict[str, Any]:
        if isinstance(session, IngestSessionRow):
            stats = await self._finished_counts(session)
            kind, name, state = session.session_type, session.session_name, session.state
        else:
            stats = self._statistics(session)
            kind, name, state = session.session_type.value, session.session_name, session.state.value
        return {
            "sessionId": session.id,
            "jobId": session.job_id,
            "sessionType": kind,
            "sessionName": name,
            "status": state,
            "statistics": stats,
            "createdAt": iso(session.created_at),
            "lastActivityAt": iso(session.last_activity_at),
        }

    async def _ended(self, session: LiveSession | IngestSessionRow) -> dict[str, Any]:
        status = await self._status(session)
        stats = status["statistics"]
        finished = session.finished_at
        duration = stats["sessionDurationMs"]
        body: dict[str, Any] = {
            "sessionId": session.id,
            "status": status["status"],
            "finalStatistics": {
                "totalRecordsReceived": stats["totalRecordsReceived"],
                "totalBatchesReceived": stats["totalBatchesReceived"],
                "totalAtomsCreated": stats["totalAtomsCreated"],
                "totalDurationMs": duration,
                "averageThroughputRecordsPerSecond": round(stats["totalRecordsReceived"] / (duration / 1000))
                if duration
                else 0,
            },
        }
        if finished is not None:
            body["completedAt"] = iso(finished)
        return body

    async def _job(self, session: LiveSession | IngestSessionRow, request: Request) -> dict[str, Any]:
        state = SessionState(session.state) if isinstance(session, IngestSessionRow) else session.state
        url = str(request.base_url).rstrip("/") + f"/api/streaming/jobs/{session.job_id}/status"
        body: dict[str, Any] = {"jobId": session.job_id, "sessionId": session.id, "startedAt": iso(session.created_at)}
        if isinstance(session, LiveSession):
            atoms = session.atoms_created
        else:
            atoms = int((await self._finished_counts(session))["totalAtomsCreated"])
        if state == SessionState.COMPLETED:
            body |= {
                "status": "completed",
                "result": {
                    "atomsCreated": atoms,
                    "totalDurationMs": _ms(session.finished_at, session.created_at),
                    "finalHash": session.final_hash,
                },
                "completedAt": iso(session.finished_at) if session.finished_at else None,
            }
            return body
        if state == SessionState.FAILED:
            error = session.error or {}
            return body | {
                "status": "failed",
                "error": error,
                "partialResult": {"atomsCreated": atoms},
                "failedAt": error.get("failedAt"),
            }
        if state == SessionState.CANCELLED:
            return body | {
                "status": "cancelled",
                "cancelledAt": iso(session.finished_at) if session.finished_at else None,
                "partialResult": {"atomsCreated": atoms, "itemsProcessed": atoms},
                "error": session.error,
            }
        assert isinstance(session, LiveSession)  # noqa: S101 -- only live sessions are in progress
        return body | {
            "status": "in-progress",
            "progress": self._progress(session),
            "lastUpdatedAt": iso(session.last_activity_at),
            "statusUrl": url,
        }

    def _progress(self, session: LiveSession) -> dict[str, Any]:
        received, done = session.records_received, session.atoms_created
        ending = session.state == SessionState.COMPLETING
        now = self.service.clock.now()
        elapsed_ms = max(1.0, (now - session.created_at).total_seconds() * 1000)
        rate = done / elapsed_ms  # atoms per ms
        remaining = received - done
        eta = round(remaining / rate) if rate > 0 and remaining else (0 if not remaining else None)
        if not ending:
            current = "upload"
        elif remaining:
            current = "atomization"
        else:
            current = "completion"
        upload_ms = _ms(session.ended_at, session.created_at) if session.ended_at else None
        percent = 100 * done / received if received else 0.0
        phases: dict[str, dict[str, Any]] = {
            "upload": {"status": "completed", "durationMs": upload_ms}
            if ending
            else {"status": "in-progress", "itemsReceived": received},
            "validation": {"status": "completed" if ending else "in-progress", "itemsValidated": received},
            "atomization": {
                "status": "completed" if ending and not remaining else ("in-progress" if received else "pending"),
                "percentComplete": round(percent, 1),
                "estimatedRemainingMs": eta,
            },
            "indexing": {
                "status": "completed" if ending and not remaining else ("in-progress" if done else "pending"),
                "itemsIndexed": done,
            },
            "completion": {"status": "in-progress" if ending and not remaining else "pending"},
        }
        return {
            "currentStep": current,
            "totalSteps": len(PHASES),
            "percentComplete": round(min(percent, 99.0) if received else 0.0, 1),
            "itemsProcessed": done,
            "totalItems": received,
            "estimatedTimeRemainingMs": eta,
            "phaseProgress": phases,
        }

    # -- sessions ----------------------------------------------------------------------

    def _held_here(self) -> list[Any]:
        """A dependency that passes a request for a session another node holds on to that node."""
        service, forwarder = self.service, self.forwarder

        async def held_here(request: Request, identity: AnyIdentity) -> None:
            if forwarder is None:
                return
            params = request.path_params
            node = await service.holder(
                identity,
                session_id=params.get("sessionId"),
                job_id=params.get("jobId"),
                batch_id=params.get("batchId"),
            )
            if node is not None:
                raise Forwarded(await forwarder.forward(request, node))

        return [Depends(held_here)]

    def _sessions(self) -> None:
        router, service = self.router, self.service
        held = self._held_here()

        @router.post("/sessions/start", summary="Start a streaming session")
        async def start_session(body: StartRequest, identity: AnyIdentity, request: Request) -> dict[str, Any]:
            """Create a session (and its job); answers the seed's URLs, built from this request's base URL."""
            session = await service.start(identity, body)
            return {
                "sessionId": session.id,
                "jobId": session.job_id,
                "sessionType": session.session_type.value,
                "sessionName": session.session_name,
                "status": session.state.value,
                "createdAt": iso(session.created_at),
                **_urls(request, session.id),
            }

        @router.post("/sessions/{sessionId}/upload", summary="Upload records, frames or buffers", dependencies=held)
        async def upload(sessionId: str, request: Request, identity: AnyIdentity) -> Response:
            """Answered once the records are durable; they are batched and processed after."""
            body = await read_body(request, service.config.max_body_bytes)
            result = await service.upload(identity, sessionId, body)
            return json_response(result)

        @router.get("/sessions/{sessionId}/status", summary="A session's status and statistics", dependencies=held)
        async def session_status(sessionId: str, identity: AnyIdentity) -> dict[str, Any]:
            return await self._status(await service.find(identity, sessionId))

        @router.post("/sessions/{sessionId}/end", summary="End a session", dependencies=held)
        async def end_session(sessionId: str, identity: AnyIdentity, request: Request) -> dict[str, Any]:
            """Stops uploads and finishes processing; with `waitForCompletion`, waits up to `timeoutMs`."""
            raw = await request.body()
            options = EndRequest.model_validate_json(raw) if raw.strip() else EndRequest()
            session = await service.end(
                identity, sessionId, wait=options.waitForCompletion, timeout_ms=options.timeoutMs
            )
            return await self._ended(session)

        @router.post("/sessions/{sessionId}/pause", summary="Pause a session (uploads are refused)", dependencies=held)
        async def pause_session(sessionId: str, identity: AnyIdentity) -> dict[str, Any]:
            return await self._status(await service.pause(identity, sessionId))

        @router.post("/sessions/{sessionId}/resume", summary="Resume a paused session", dependencies=held)
        async def resume_session(sessionId: str, identity: AnyIdentity) -> dict[str, Any]:
            return await self._status(await service.resume(identity, sessionId))

        @router.get("/sessions/{sessionId}/records", summary="Stored records in timestamp order (NDJSON)")
        async def session_records(
            sessionId: str,
            identity: AnyIdentity,
            start: Annotated[str | None, Query(alias="from", description="ISO-8601; inclusive")] = None,
            end: Annotated[str | None, Query(alias="to", description="ISO-8601; inclusive")] = None,
            limit: Annotated[int, Query(ge=1, le=1_000_000)] = 10_000,
        ) -> StreamingResponse:
            bounds = []
            for name, value in (("from", start), ("to", end)):
                micros = timestamp_us(value) if value is not None else None
                if value is not None and micros is None:
                    raise APIError.invalid_argument(
                        f"'{name}' must be an ISO-8601 time",
                        fields=[{"field": f"query.{name}", "message": "not an ISO-8601 time", "type": "value_error"}],
                    )
                bounds.append(micros)
            lines = await service.records(identity, sessionId, start=bounds[0], end=bounds[1], limit=limit)
            return StreamingResponse(lines, media_type="application/x-ndjson")

    def _jobs(self) -> None:
        router, service = self.router, self.service
        held = self._held_here()

        @router.get("/jobs/{jobId}/status", summary="A job's status and progress", dependencies=held)
        async def job_status(jobId: str, identity: AnyIdentity, request: Request) -> dict[str, Any]:
            return await self._job(await service.find_job(identity, jobId), request)

        @router.post("/jobs/{jobId}/cancel", summary="Cancel a job", dependencies=held)
        async def cancel_job(jobId: str, identity: AnyIdentity, request: Request) -> dict[str, Any]:
            """Stops processing; what was stored stays and is reported as `partialResult`."""
            return await self._job(await service.cancel(identity, jobId), request)

    def _extras(self) -> None:
        router, service = self.router, self.service

        @router.post("/schemas", summary="Register a telemetry schema")
        async def put_schema(request: Request, identity: AnyIdentity) -> Response:
            """The seed's schema format; registering an existing name replaces it (200), a new one is 201."""
            try:
                definition = orjson.loads(await request.body())
            except orjson.JSONDecodeError as exc:
                raise APIError.invalid_argument(f"The body must be JSON: {exc}") from None
            schema, created = await service.put_schema(identity, definition)
            body = {"schemaName": schema.name, "schemaVersion": schema.version, "fields": len(schema.fields)}
            return json_response(body, 201 if created else 200)

        @router.get("/dlq", summary="Batches in the dead-letter queue")
        async def dead_letters(identity: AnyIdentity) -> dict[str, Any]:
            return {"batches": await service.dead_letters(identity)}

        @router.post(
            "/dlq/{batchId}/retry",
            summary="Retry a batch of the dead-letter queue",
            status_code=202,
            dependencies=self._held_here(),
        )
        async def retry_dead(batchId: str, identity: AnyIdentity) -> dict[str, Any]:
            return await service.retry_dead(identity, batchId)

    async def _ws_upload(
        self, stream: StreamInOut[Any, Any], body: bytes, session: LiveSession | None, node: str | None, target: str
    ) -> dict[str, Any]:
        """A WebSocket upload's answer (``upload-accepted`` or ``error``): made here when this
        process holds the session, else by the holder, to which the upload is passed on."""
        try:
            if session is not None:
                return {"type": "upload-accepted", **await self.service.accept(session, body, time.monotonic())}
            connection = stream.info.connection
            if node is None or self.forwarder is None or connection is None:  # pragma: no cover - set by the app
                raise APIError.failed_precondition("This session is held by another process: upload over HTTP")
            answer = await self.forwarder.post_for(connection, target, body, node)
        except APIError as exc:
            return {"type": "error", "errorCode": exc.code.value, **exc.body()}
        answered = orjson.loads(bytes(answer.body))
        if answer.status_code == 200:
            return {"type": "upload-accepted", **answered}
        return {"type": "error", "errorCode": answered.get("code"), **answered}

    # -- streams -----------------------------------------------------------------------

    def _stream_routes(self) -> None:
        service = self.service

        @self.streams.stream_out("/sessions/{sessionId}/events", auth=True, rate_limit="tenant")
        async def session_events(handshake: SessionHandshake, stream: StreamOut[Any]) -> None:
            """The session's events (`session-started`, `batch-received`, `batch-processed`, `progress`,
            `error`, `session-completed`); resume with Last-Event-ID."""
            found = await service.find(stream.auth, handshake.sessionId)
            channel = f"ingest/t{found.tenant}/{found.id}"
            resume = stream.last_event_id
            subscription = await service.broker.subscribe(channel, after=resume, from_start=resume is None)
            if isinstance(found, IngestSessionRow) and SessionState(found.state) in FINAL_STATES:
                # finished: what history holds, then the end
                try:
                    for message in subscription.backlog:
                        await stream.send_frame(_sse_frame(message))
                finally:
                    subscription.close()
                return
            await follow(stream, subscription, _sse_frame, gap_frame=_sse_gap, until=_is_last)

        @self.streams.stream_in_out("/sessions/{sessionId}/ws", auth=True, rate_limit="tenant")
        async def session_socket(handshake: SessionHandshake, stream: StreamInOut[Any, Any]) -> None:
            """Events as `{"type": ...}` messages; send `{"type": "telemetry", "records": [...]}` to upload."""
            import asyncio

            node = await service.holder(stream.auth, session_id=handshake.sessionId)
            session: LiveSession | None = None
            if node is None:
                session = await service.live_session(stream.auth, handshake.sessionId)
                channel = session.channel
            else:  # held by another node or worker: events from the broker, uploads passed on
                found = await service.find(stream.auth, handshake.sessionId)
                channel = f"ingest/t{found.tenant}/{found.id}"
            subscription = await service.broker.subscribe(channel, after=stream.last_event_id)
            target = f"{self.router.prefix}/sessions/{handshake.sessionId}/upload"

            async def uploads() -> None:
                async for message in stream:
                    await stream.send(await self._ws_upload(stream, orjson.dumps(message), session, node, target))

            tasks = {
                asyncio.create_task(follow(stream, subscription, _ws_frame, gap_frame=_ws_gap)),
                asyncio.create_task(uploads()),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                subscription.close()


def _is_last(message: BrokerMessage) -> bool:
    final = message.memo.get("ingest.final")
    if final is None:
        final = message.memo["ingest.final"] = orjson.loads(message.data).get("type") in (
            "session-completed",
            "session-cancelled",
        )
    return bool(final)
