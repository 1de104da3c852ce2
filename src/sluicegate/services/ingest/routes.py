"""The ``/api/streaming`` routes of the second seed, over :class:`IngestService`.

Every route needs a bearer token (or an API key; the tenant comes from it) and counts
against the tenant's rate limit (``SLUICEGATE_RATE_LIMIT_TENANT``, the seed's 1,000
requests a minute, with the seed's 429 body). Every node answers every route for every
session: what they say comes from the database, the session's log and the broker.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response, StreamingResponse

from sluicegate.errors import APIError, invalid_fields
from sluicegate.responses import json_response, read_body
from sluicegate.security.deps import AnyIdentity, rate_limited
from sluicegate.services.ingest import dlq, readback, schemas
from sluicegate.services.ingest.models import FINAL_STATES, EndRequest, SessionState, StartRequest
from sluicegate.services.ingest.service import IngestService, SessionInfo, SessionView, channel_of, iso
from sluicegate.services.ingest.validation import timestamp_us
from sluicegate.services.relay import follow, memo_frame
from sluicegate.streaming import Frame, StreamInOut, StreamOut, StreamRouter
from sluicegate.streaming.tasks import until_first

if TYPE_CHECKING:
    from datetime import datetime

    from sluicegate.engines.broker import BrokerMessage, Gap

__all__ = ["IngestRoutes"]

PHASES = ("upload", "validation", "atomization", "indexing", "completion")
#: Largest body of ``POST .../end``.
END_BODY_BYTES = 4096


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

    def __init__(self, service: IngestService) -> None:
        self.service = service
        limited = [Depends(rate_limited("tenant"))]
        self.router = APIRouter(prefix="/api/streaming", tags=["streaming"], dependencies=limited)
        self.streams = StreamRouter(prefix="/api/streaming", tags=("streaming",))
        self._sessions()
        self._jobs()
        self._extras()
        self._stream_routes()

    # -- shapes ------------------------------------------------------------------------

    def _statistics(self, view: SessionView) -> dict[str, Any]:
        row, processed = view.row, view.batches_processed
        stats: dict[str, Any] = {
            "totalRecordsReceived": view.records_received,
            "totalBatchesReceived": view.batches_cut,
            "totalAtomsCreated": view.atoms_created,
            "averageBatchProcessingTimeMs": round(view.processing_ms_total / processed, 3) if processed else 0,
            "dataReceivedBytes": view.bytes_received,
            "sessionDurationMs": _ms(row.finished_at or self.service.clock.now(), row.created_at),
        }
        if view.state not in FINAL_STATES:
            stats["recordsQueued"] = view.records_queued
        return stats

    def _status(self, view: SessionView) -> dict[str, Any]:
        row = view.row
        return {
            "sessionId": row.id,
            "jobId": row.job_id,
            "sessionType": row.session_type,
            "sessionName": row.session_name,
            "status": row.state,
            "statistics": self._statistics(view),
            "createdAt": iso(row.created_at),
            "lastActivityAt": iso(view.last_activity_at),
        }

    def _ended(self, view: SessionView) -> dict[str, Any]:
        status = self._status(view)
        stats = status["statistics"]
        duration = stats["sessionDurationMs"]
        body: dict[str, Any] = {
            "sessionId": view.id,
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
        if view.row.finished_at is not None:
            body["completedAt"] = iso(view.row.finished_at)
        return body

    def _job(self, view: SessionView, request: Request) -> dict[str, Any]:
        row, state, atoms = view.row, view.state, view.atoms_created
        url = str(request.base_url).rstrip("/") + f"/api/streaming/jobs/{row.job_id}/status"
        body: dict[str, Any] = {"jobId": row.job_id, "sessionId": row.id, "startedAt": iso(row.created_at)}
        if state == SessionState.COMPLETED:
            return body | {
                "status": "completed",
                "result": {
                    "atomsCreated": atoms,
                    "totalDurationMs": _ms(row.finished_at, row.created_at),
                    "finalHash": row.final_hash,
                },
                "completedAt": iso(row.finished_at) if row.finished_at else None,
            }
        if state == SessionState.FAILED:
            error = row.error or {}
            return body | {
                "status": "failed",
                "error": error,
                "partialResult": {"atomsCreated": atoms},
                "failedAt": error.get("failedAt"),
            }
        if state == SessionState.CANCELLED:
            return body | {
                "status": "cancelled",
                "cancelledAt": iso(row.finished_at) if row.finished_at else None,
                "partialResult": {"atomsCreated": atoms, "itemsProcessed": atoms},
                "error": row.error,
            }
        return body | {
            "status": "in-progress",
            "progress": self._progress(view),
            "lastUpdatedAt": iso(view.last_activity_at),
            "statusUrl": url,
        }

    def _progress(self, view: SessionView) -> dict[str, Any]:
        row = view.row
        received, done = view.records_received, view.atoms_created
        ending = view.state == SessionState.COMPLETING
        now = self.service.clock.now()
        elapsed_ms = max(1.0, (now - row.created_at).total_seconds() * 1000)
        rate = done / elapsed_ms  # atoms per ms
        remaining = received - done
        eta = round(remaining / rate) if rate > 0 and remaining else (0 if not remaining else None)
        if not ending:
            current = "upload"
        elif remaining:
            current = "atomization"
        else:
            current = "completion"
        upload_ms = _ms(row.ended_at, row.created_at) if row.ended_at else None
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

    def _sessions(self) -> None:
        router, service = self.router, self.service

        @router.post("/sessions/start", summary="Start a streaming session")
        async def start_session(body: StartRequest, identity: AnyIdentity, request: Request) -> dict[str, Any]:
            """Create a session (and its job); answers the seed's URLs, built from this request's base URL."""
            row = await service.start(identity, body)
            media = {kind: row.config[kind] for kind in ("video", "audio") if kind in row.config}
            return {
                "sessionId": row.id,
                "jobId": row.job_id,
                "sessionType": row.session_type,
                "sessionName": row.session_name,
                "status": row.state,
                "createdAt": iso(row.created_at),
                **media,
                **_urls(request, row.id),
            }

        @router.post("/sessions/{sessionId}/upload", summary="Upload records, frames or buffers")
        async def upload(sessionId: str, request: Request, identity: AnyIdentity) -> Response:
            """Answered once the records are durable in the session's log; they are batched and processed after."""
            body = await read_body(request, service.config.max_body_bytes)
            result = await service.upload(identity, sessionId, body)
            return json_response(result)

        @router.get("/sessions/{sessionId}/status", summary="A session's status and statistics")
        async def session_status(sessionId: str, identity: AnyIdentity) -> dict[str, Any]:
            return self._status(await service.view(await service.find(identity, sessionId)))

        @router.post("/sessions/{sessionId}/end", summary="End a session")
        async def end_session(sessionId: str, identity: AnyIdentity, request: Request) -> dict[str, Any]:
            """Stops uploads and finishes processing; with `waitForCompletion`, waits up to `timeoutMs`."""
            raw = await read_body(request, END_BODY_BYTES)
            try:
                options = EndRequest.model_validate_json(raw) if raw.strip() else EndRequest()
            except ValidationError as exc:
                raise invalid_fields(exc.errors(), message="Invalid end request") from None
            row = await service.end(identity, sessionId, wait=options.waitForCompletion, timeout_ms=options.timeoutMs)
            return self._ended(await service.view(row))

        @router.post("/sessions/{sessionId}/pause", summary="Pause a session (uploads are refused)")
        async def pause_session(sessionId: str, identity: AnyIdentity) -> dict[str, Any]:
            return self._status(await service.view(await service.pause(identity, sessionId)))

        @router.post("/sessions/{sessionId}/resume", summary="Resume a paused session")
        async def resume_session(sessionId: str, identity: AnyIdentity) -> dict[str, Any]:
            return self._status(await service.view(await service.resume(identity, sessionId)))

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
            row = await service.find(identity, sessionId)
            lines = await readback.records(
                service.store, service.objects, row.id, start=bounds[0], end=bounds[1], limit=limit
            )
            return StreamingResponse(lines, media_type="application/x-ndjson")

    def _jobs(self) -> None:
        router, service = self.router, self.service

        @router.get("/jobs/{jobId}/status", summary="A job's status and progress")
        async def job_status(jobId: str, identity: AnyIdentity, request: Request) -> dict[str, Any]:
            return self._job(await service.view(await service.find_job(identity, jobId)), request)

        @router.post("/jobs/{jobId}/cancel", summary="Cancel a job")
        async def cancel_job(jobId: str, identity: AnyIdentity, request: Request) -> dict[str, Any]:
            """Stops processing; what was stored stays and is reported as `partialResult`."""
            return self._job(await service.view(await service.cancel(identity, jobId)), request)

    def _extras(self) -> None:
        router, service = self.router, self.service

        @router.post("/schemas", summary="Register a telemetry schema")
        async def put_schema(request: Request, identity: AnyIdentity) -> Response:
            """The seed's schema format; registering an existing name replaces it (200), a new one is 201."""
            try:
                definition = orjson.loads(await request.body())
            except orjson.JSONDecodeError as exc:
                raise APIError.invalid_argument(f"The body must be JSON: {exc}") from None
            schema, created = await schemas.put_schema(service.store, service.clock, identity, definition)
            body = {"schemaName": schema.name, "schemaVersion": schema.version, "fields": len(schema.fields)}
            return json_response(body, 201 if created else 200)

        @router.get("/dlq", summary="Batches in the dead-letter queue")
        async def dead_letters(identity: AnyIdentity) -> dict[str, Any]:
            return {"batches": await dlq.dead_letters(service, identity)}

        @router.post("/dlq/{batchId}/retry", summary="Retry a batch of the dead-letter queue", status_code=202)
        async def retry_dead(batchId: str, identity: AnyIdentity) -> dict[str, Any]:
            return await dlq.retry_dead(service, identity, batchId)

    async def _ws_upload(self, info: SessionInfo, body: bytes) -> dict[str, Any]:
        """A WebSocket upload's answer: ``upload-accepted``, or ``error`` (the socket stays open)."""
        try:
            return {"type": "upload-accepted", **await self.service.accept(info, body, time.monotonic())}
        except APIError as exc:
            return {"type": "error", "errorCode": exc.code.value, **exc.body()}

    # -- streams -----------------------------------------------------------------------

    def _stream_routes(self) -> None:
        service = self.service

        @self.streams.stream_out("/sessions/{sessionId}/events", auth=True, rate_limit="tenant")
        async def session_events(handshake: SessionHandshake, stream: StreamOut[Any]) -> None:
            """The session's events (`session-started`, `batch-received`, `batch-processed`, `progress`,
            `error`, `batch-requeued`, `session-completed`, `session-failed`, `session-cancelled`);
            resume with Last-Event-ID."""
            row = await service.find(stream.auth, handshake.sessionId)
            resume = stream.last_event_id
            subscription = await service.broker.subscribe(
                channel_of(row.tenant, row.id), after=resume, from_start=resume is None
            )
            if SessionState(row.state) in FINAL_STATES:  # finished: what history holds, then the end
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
            info = await service.info(stream.auth, handshake.sessionId)
            row = await service.find(stream.auth, handshake.sessionId)
            state = SessionState(row.state)
            if state in FINAL_STATES:
                raise state_finished(row.id, state)
            subscription = await service.broker.subscribe(info.channel, after=stream.last_event_id)

            async def uploads() -> None:
                async for message in stream:
                    await stream.send(await self._ws_upload(info, orjson.dumps(message)))

            try:
                await until_first(follow(stream, subscription, _ws_frame, gap_frame=_ws_gap), uploads())
            finally:
                subscription.close()


def state_finished(session_id: str, state: SessionState) -> APIError:
    from sluicegate.services.ingest.errors import state_conflict

    return state_conflict(session_id, state, "The session is finished")


def _is_last(message: BrokerMessage) -> bool:
    final = message.memo.get("ingest.final")
    if final is None:
        final = message.memo["ingest.final"] = orjson.loads(message.data).get("type") in (
            "session-completed",
            "session-failed",
            "session-cancelled",
        )
    return bool(final)
