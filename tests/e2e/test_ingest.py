"""The ``/api/streaming`` ingestion API (the second seed), end to end against real servers.

Every test talks to ``sluicegate serve`` over HTTP, SSE and WebSocket with bearer tokens,
and asserts what a client sees: bodies, statuses, events and the records read back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import orjson
import pytest
from moto.server import ThreadedMotoServer
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sluicegate.clock import ManualClock
from sluicegate.security.identity import TokenService
from tests.e2e.helpers import eventually, loads, read_events, receive_until, types
from tests.seeds import IOT_SENSORS_V1 as SEED_SCHEMA
from tests.server import UNIT, start_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluicegate.streaming.sse import SSEEvent
    from tests.server import Server

SECRET = "ingest-e2e-secret-" + "k" * 40
API = "/api/streaming"
BUCKET = "ingest-segments"
BASE = datetime(2025, 1, 20, 10, 30, tzinfo=UTC)


def canonical(record: Any) -> bytes:
    """A record's canonical bytes: its JSON as sent, without whitespace (the tests send orjson's)."""
    return orjson.dumps(record)


def canonical_size(records: list[Any]) -> int:
    """dataReceivedBytes counts the records' canonical bytes, one line each."""
    return sum(len(canonical(record)) + 1 for record in records)


HEX64 = re.compile(r"[0-9a-f]{64}")

#: The seed's two telemetry records, exactly.
SEED_RECORDS: list[dict[str, Any]] = [
    {
        "timestamp": "2025-01-20T10:30:00.000Z",
        "values": {"temperature": 72.5, "humidity": 45.2, "pressure": 1013.25},
    },
    {
        "timestamp": "2025-01-20T10:30:00.010Z",
        "values": {"temperature": 72.6, "humidity": 45.1, "pressure": 1013.26},
    },
]


NOT_FOUND_SUGGESTIONS = [
    "Verify session ID is correct",
    "Check if session expired (max 24 hours)",
    "Start a new session",
]

FAST = {"maxBatchDelayMs": 50, "retryDelayMs": 50}


def token(tenant: int) -> str:
    service = TokenService(SECRET, clock=ManualClock(start=datetime.now(UTC)))
    issued, _ = service.issue(tenant=tenant, subject="t", ttl=timedelta(hours=1))
    return issued


def auth(tenant: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant)}"}


def ts(ms: int) -> str:
    """An ISO-8601 time ``ms`` milliseconds after the seed's first record."""
    return (BASE + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reading(ms: int, temperature: float = 70.0, humidity: float = 40.0) -> dict[str, Any]:
    return {"timestamp": ts(ms), "values": {"temperature": temperature, "humidity": humidity}}


def final_hash(records: list[dict[str, Any]]) -> str:
    """What the seed's ``finalHash`` must be: SHA-256 over each record's SHA-256, in upload order."""
    digests = b"".join(hashlib.sha256(canonical(record)).digest() for record in records)
    return hashlib.sha256(digests).hexdigest()


def client_for(server: Server, tenant: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=auth(tenant), timeout=10 * UNIT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start(client: httpx.AsyncClient, session_type: str = "telemetry", **options: Any) -> dict[str, Any]:
    response = await client.post(f"{API}/sessions/start", json={"sessionType": session_type, **FAST, **options})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def upload(client: httpx.AsyncClient, session_id: str, records: list[Any], field: str = "records") -> Any:
    response = await client.post(f"{API}/sessions/{session_id}/upload", json={field: records})
    assert response.status_code == 200, response.text
    return response.json()


async def status(client: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    response = await client.get(f"{API}/sessions/{session_id}/status")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def atoms_reach(client: httpx.AsyncClient, session_id: str, count: int, within: float = 5 * UNIT) -> Any:
    """Wait until ``count`` atoms were created; returns the status."""

    async def check() -> dict[str, Any] | None:
        current = await status(client, session_id)
        return current if current["statistics"]["totalAtomsCreated"] == count else None

    return await eventually(check, within=within)


async def stored(client: httpx.AsyncClient, session_id: str, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/sessions/{session_id}/records", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in response.content.splitlines()]


def data(event: SSEEvent) -> dict[str, Any]:
    body: dict[str, Any] = loads(event.data)
    return body


def parse_time(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


@pytest.fixture(scope="module")
def server(serve_module: Callable[..., Server]) -> Server:
    return serve_module(None, SLUICEGATE_JWT_SECRET=SECRET, SLUICEGATE_RATE_LIMIT_TENANT="100000/minute")


# -- 1. the seed's walk-through ------------------------------------------------------------


async def test_the_seeds_walk_through_start_upload_events_status_end_and_job(server: Server) -> None:
    async with client_for(server, 1) as client:
        before = datetime.now(UTC)
        response = await client.post(
            f"{API}/sessions/start",
            json={
                "sessionType": "telemetry",
                "sessionName": "IoT Sensor Stream 2025-01-20",
                "metadata": {"deviceId": "sensor-12345", "location": "Manufacturing Floor A", "samplingRateHz": 100},
                "batchSize": 1000,
                "maxBatchDelayMs": 50,
                "tenantId": 1,
            },
        )
        assert response.status_code == 200, response.text
        started = response.json()
        session_id = started["sessionId"]
        base = f"{server.url}{API}/sessions/{session_id}"
        assert started == {
            "sessionId": session_id,
            "jobId": started["jobId"],
            "sessionType": "telemetry",
            "sessionName": "IoT Sensor Stream 2025-01-20",
            "status": "active",
            "createdAt": started["createdAt"],
            "uploadUrl": f"{base}/upload",
            "statusUrl": f"{base}/status",
            "sseUrl": f"{base}/events",
            "websocketUrl": f"{server.ws_url}{API}/sessions/{session_id}/ws",
        }
        assert session_id and isinstance(started["jobId"], str) and started["jobId"]
        created = parse_time(started["createdAt"])
        assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)

        raw = orjson.dumps({"records": SEED_RECORDS})
        response = await client.post(started["uploadUrl"], content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        uploaded = response.json()
        assert set(uploaded) == {
            "sessionId",
            "recordsReceived",
            "recordsProcessed",
            "recordsQueued",
            "batchId",
            "processingTimeMs",
            "status",
        }
        assert uploaded["sessionId"] == session_id
        assert uploaded["recordsReceived"] == 2
        assert uploaded["recordsProcessed"] + uploaded["recordsQueued"] == 2
        assert uploaded["batchId"].startswith("batch-")
        assert isinstance(uploaded["processingTimeMs"], int | float) and uploaded["processingTimeMs"] >= 0
        assert uploaded["status"] == "active"

        live = await atoms_reach(client, session_id, 2)
        events = await read_events(client, f"{API}/sessions/{session_id}/events", 4, headers=auth(1))
        assert [e.event for e in events] == ["session-started", "batch-received", "batch-processed", "progress"]
        first, received, processed, progress = (data(e) for e in events)
        assert set(first) == {"sessionId", "timestamp"} and first["sessionId"] == session_id
        assert received["batchId"] == uploaded["batchId"] and received["recordCount"] == 2
        assert processed["batchId"] == uploaded["batchId"] and processed["atomsCreated"] == 2
        assert processed["processingTimeMs"] >= 0
        assert progress["totalRecordsReceived"] == 2 and progress["totalAtomsCreated"] == 2
        assert progress["elapsedMs"] >= 0
        for event in events:
            parse_time(data(event)["timestamp"])
        assert all(e.id for e in events)

        assert live["sessionId"] == session_id and live["status"] == "active"
        assert live["sessionType"] == "telemetry" and live["sessionName"] == "IoT Sensor Stream 2025-01-20"
        stats = live["statistics"]
        assert stats["totalRecordsReceived"] == 2
        assert stats["totalBatchesReceived"] == 1
        assert stats["totalAtomsCreated"] == 2
        assert stats["averageBatchProcessingTimeMs"] >= 0
        assert stats["dataReceivedBytes"] == canonical_size(SEED_RECORDS)
        assert stats["sessionDurationMs"] >= 0
        assert parse_time(live["lastActivityAt"]) >= parse_time(live["createdAt"])

        job = (await client.get(f"{API}/jobs/{started['jobId']}/status")).json()
        assert job["jobId"] == started["jobId"] and job["status"] == "in-progress"
        assert job["progress"]["totalSteps"] == 5
        assert job["progress"]["itemsProcessed"] == 2 and job["progress"]["totalItems"] == 2
        assert job["statusUrl"] == f"{server.url}{API}/jobs/{started['jobId']}/status"

        response = await client.post(
            f"{API}/sessions/{session_id}/end", json={"waitForCompletion": True, "timeoutMs": 5000}
        )
        assert response.status_code == 200, response.text
        ended = response.json()
        assert ended["sessionId"] == session_id and ended["status"] == "completed"
        final = ended["finalStatistics"]
        assert final["totalRecordsReceived"] == 2
        assert final["totalBatchesReceived"] == 1
        assert final["totalAtomsCreated"] == 2
        assert final["totalDurationMs"] >= 0
        assert final["averageThroughputRecordsPerSecond"] >= 0
        parse_time(ended["completedAt"])

        everything = await read_events(client, f"{API}/sessions/{session_id}/events", 100, headers=auth(1))
        assert [e.event for e in everything][:4] == [e.event for e in events]
        assert everything[-1].event == "session-completed"
        completed = data(everything[-1])
        assert completed["sessionId"] == session_id
        assert completed["totalRecords"] == 2 and completed["totalAtoms"] == 2 and completed["durationMs"] >= 0

        after = await status(client, session_id)
        assert after["status"] == "completed"
        assert after["statistics"]["totalRecordsReceived"] == 2
        assert after["statistics"]["totalBatchesReceived"] == 1
        assert after["statistics"]["totalAtomsCreated"] == 2
        assert after["statistics"]["dataReceivedBytes"] == canonical_size(SEED_RECORDS)

        job = (await client.get(f"{API}/jobs/{started['jobId']}/status")).json()
        assert job["jobId"] == started["jobId"] and job["status"] == "completed"
        assert job["result"]["atomsCreated"] == 2
        assert job["result"]["totalDurationMs"] >= 0
        assert HEX64.fullmatch(job["result"]["finalHash"])
        assert job["result"]["finalHash"] == final_hash(SEED_RECORDS)
        assert parse_time(job["completedAt"]) >= parse_time(job["startedAt"]) == created
        assert await stored(client, session_id) == SEED_RECORDS


# -- 2. batching ---------------------------------------------------------------------------


async def test_batches_are_cut_by_size_and_the_rest_after_the_delay(server: Server) -> None:
    async with client_for(server, 2) as client:
        session = await start(client, batchSize=3)
        records = [reading(n) for n in range(7)]
        answer = await upload(client, session["sessionId"], records)
        assert answer["recordsReceived"] == 7
        events = await read_events(client, f"{API}/sessions/{session['sessionId']}/events", 10, headers=auth(2))
        await atoms_reach(client, session["sessionId"], 7)
        received = [data(e) for e in events if e.event == "batch-received"]
        processed = [data(e) for e in events if e.event == "batch-processed"]
    assert [r["recordCount"] for r in received] == [3, 3, 1]
    assert len({r["batchId"] for r in received}) == 3
    assert sorted(p["atomsCreated"] for p in processed) == [1, 3, 3]
    assert {p["batchId"] for p in processed} == {r["batchId"] for r in received}


async def test_a_partial_batch_waits_for_the_delay_and_is_processed_then(server: Server) -> None:
    async with client_for(server, 2) as client:
        session = await start(client, batchSize=100, maxBatchDelayMs=round(300 * UNIT))
        await upload(client, session["sessionId"], [reading(0), reading(1)])
        early = await status(client, session["sessionId"])
        assert early["statistics"]["totalAtomsCreated"] == 0
        assert early["statistics"]["totalRecordsReceived"] == 2
        await atoms_reach(client, session["sessionId"], 2)


# -- 3. reading records back ---------------------------------------------------------------


async def test_records_read_back_in_timestamp_order_filtered_and_limited(server: Server) -> None:
    order = [50, 10, 90, 30, 70, 0, 60, 20, 80, 40]
    records = [reading(ms, temperature=float(ms)) for ms in order]
    async with client_for(server, 3) as client:
        session = await start(client, batchSize=4)
        session_id = session["sessionId"]
        await upload(client, session_id, records[:6])
        await upload(client, session_id, records[6:])
        await atoms_reach(client, session_id, 10)

        everything = await stored(client, session_id)
        ranged = await stored(client, session_id, **{"from": ts(20), "to": ts(60)})
        limited = await stored(client, session_id, limit=3)
        ranged_limited = await stored(client, session_id, **{"from": ts(35), "limit": 2})
        only_to = await stored(client, session_id, to=ts(10))
        empty = await stored(client, session_id, **{"from": ts(91)})
        bad = await client.get(f"{API}/sessions/{session_id}/records", params={"from": "yesterday"})
        bad_to = await client.get(f"{API}/sessions/{session_id}/records", params={"to": "2025-13-45"})
    by_time = sorted(records, key=lambda r: r["timestamp"])
    assert everything == by_time
    assert [r["timestamp"] for r in ranged] == [ts(ms) for ms in (20, 30, 40, 50, 60)]
    assert limited == by_time[:3]
    assert [r["timestamp"] for r in ranged_limited] == [ts(40), ts(50)]
    assert [r["timestamp"] for r in only_to] == [ts(0), ts(10)]
    assert empty == []
    assert bad.status_code == 400 and bad.json()["fields"][0]["field"] == "query.from"
    assert bad_to.status_code == 400 and bad_to.json()["fields"][0]["field"] == "query.to"


async def test_ending_while_uploads_are_in_flight_keeps_every_acknowledged_record(server: Server) -> None:
    async with client_for(server, 3) as client:
        session = await start(client, batchSize=7)
        session_id = session["sessionId"]

        async def send(k: int) -> httpx.Response:
            return await client.post(
                f"{API}/sessions/{session_id}/upload", json={"records": [reading(10 * k + i) for i in range(10)]}
            )

        uploads = [asyncio.create_task(send(k)) for k in range(20)]
        await asyncio.sleep(0.005)
        ended = await client.post(f"{API}/sessions/{session_id}/end", json={"waitForCompletion": True})
        answers = await asyncio.gather(*uploads)
        read_back = await stored(client, session_id)
        final = await status(client, session_id)
    acknowledged = [k for k, answer in enumerate(answers) if answer.status_code == 200]
    assert {a.status_code for a in answers} <= {200, 409}
    assert all(a.json()["status"] in ("completing", "completed") for a in answers if a.status_code == 409)
    assert ended.json()["status"] == "completed"
    expected = sorted(ts(10 * k + i) for k in acknowledged for i in range(10))
    assert [r["timestamp"] for r in read_back] == expected
    assert final["statistics"]["totalRecordsReceived"] == len(expected)


async def test_records_less_than_a_millisecond_apart_read_back_in_timestamp_order(server: Server) -> None:
    later = {"timestamp": "2025-01-20T10:30:00.000900Z", "values": {"n": 1}}
    earlier = {"timestamp": "2025-01-20T10:30:00.000100Z", "values": {"n": 2}}
    async with client_for(server, 3) as client:
        session = await start(client, batchSize=1)
        await upload(client, session["sessionId"], [later])
        await upload(client, session["sessionId"], [earlier])
        await atoms_reach(client, session["sessionId"], 2)
        everything = await stored(client, session["sessionId"])
        until = await stored(client, session["sessionId"], to="2025-01-20T10:30:00.000500Z")
    assert everything == [earlier, later]
    assert until == [earlier]


# -- 4. schemas ----------------------------------------------------------------------------


async def test_schema_validation_rejects_every_bad_record_and_stores_nothing(server: Server) -> None:
    async with client_for(server, 4) as client:
        created = await client.post(f"{API}/schemas", json=SEED_SCHEMA)
        again = await client.post(f"{API}/schemas", json=SEED_SCHEMA)
        assert created.status_code == 201, created.text
        assert created.json() == {"schemaName": "iot-sensors-v1", "schemaVersion": "1.0.0", "fields": 3}
        assert again.status_code == 200, again.text

        session = await start(client, schemaName="iot-sensors-v1")
        session_id = session["sessionId"]
        bad_batch = [
            reading(0, temperature=72.5, humidity=45.2),
            {"timestamp": ts(1), "values": {"temperature": "invalid", "humidity": 45.0}},
            {"timestamp": ts(2), "values": {"temperature": 70.0, "humidity": 150.0}},
            {"timestamp": ts(3), "values": {"temperature": 70.0}},
            reading(4),
        ]
        refused = await client.post(f"{API}/sessions/{session_id}/upload", json={"records": bad_batch})
        assert refused.status_code == 400, refused.text
        body = refused.json()
        assert body["error"] == "Invalid data format"
        assert body["batchId"].startswith("batch-")
        assert body["suggestion"] == "Fix invalid records and resubmit batch"
        problems = body["invalidRecords"]
        assert [(p["recordIndex"], p["field"]) for p in problems] == [
            (1, "temperature"),
            (2, "humidity"),
            (3, "humidity"),
        ]
        assert problems[0] == {
            "recordIndex": 1,
            "field": "temperature",
            "value": "invalid",
            "expectedType": "float",
            "message": "Cannot parse 'invalid' as float",
        }
        assert problems[1]["value"] == 150.0 and problems[1]["expectedType"] == "float"
        assert "max" in problems[1]["message"]
        assert problems[2]["expectedType"] == "float" and "required" in problems[2]["message"].lower()

        nothing = await status(client, session_id)
        assert nothing["statistics"]["totalRecordsReceived"] == 0
        assert nothing["statistics"]["dataReceivedBytes"] == 0

        good = [reading(0, temperature=72.5, humidity=45.2), reading(4, temperature=-50.0, humidity=100.0)]
        accepted = await upload(client, session_id, good)
        assert accepted["recordsReceived"] == 2
        await atoms_reach(client, session_id, 2)
        assert await stored(client, session_id) == good


async def test_unknown_schema_and_bad_schema_definitions_are_refused(server: Server) -> None:
    async with client_for(server, 4) as client:
        unknown = await client.post(
            f"{API}/sessions/start", json={"sessionType": "telemetry", "schemaName": "no-such-schema"}
        )
        bad_type = await client.post(
            f"{API}/schemas", json={"schemaName": "bad", "fields": [{"name": "x", "type": "complex"}]}
        )
        no_fields = await client.post(f"{API}/schemas", json={"schemaName": "bad", "fields": []})
        bad_bounds = await client.post(
            f"{API}/schemas",
            json={"schemaName": "bad", "fields": [{"name": "x", "type": "float", "validation": {"min": "low"}}]},
        )
        not_json = await client.post(f"{API}/schemas", content=b"{nope", headers={"Content-Type": "application/json"})
        await client.post(f"{API}/schemas", json=SEED_SCHEMA)
        async with client_for(server, 5) as other_tenant:  # schemas belong to a tenant
            theirs = await other_tenant.post(
                f"{API}/sessions/start", json={"sessionType": "telemetry", "schemaName": "iot-sensors-v1"}
            )
        video = await client.post(
            f"{API}/sessions/start", json={"sessionType": "video", "schemaName": "iot-sensors-v1"}
        )
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["schemaName"] == "no-such-schema"
    assert bad_type.status_code == 400 and bad_type.json()["fields"][0]["field"] == "body.fields.0.type"
    assert no_fields.status_code == 400 and no_fields.json()["fields"][0]["field"] == "body.fields"
    assert bad_bounds.status_code == 400 and bad_bounds.json()["fields"][0]["field"] == "body.fields.0.validation"
    assert not_json.status_code == 400
    assert theirs.status_code == 404
    assert video.status_code == 400


# -- 5. video frames and audio buffers -----------------------------------------------------

JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(range(64)) + b"\xff\xd9").decode()
WAV = base64.b64encode(b"RIFF" + bytes(40) + b"WAVEfmt ").decode()


def frame(n: int, **changes: Any) -> dict[str, Any]:
    item = {"frameNumber": n, "timestamp": ts(33 * n), "imageData": JPEG, "format": "jpeg", "width": 1920}
    item["height"] = 1080
    return item | changes


def buffer(n: int, **changes: Any) -> dict[str, Any]:
    item = {"bufferNumber": n, "timestamp": ts(10 * n), "audioData": WAV, "format": "wav", "sampleRate": 44100}
    item |= {"channels": 2, "bitDepth": 16}
    return item | changes


async def test_video_frames_are_checked_accepted_and_stored(server: Server) -> None:
    async with client_for(server, 6) as client:
        session = await start(client, "video", batchSize=2)
        session_id = session["sessionId"]
        good = [frame(1), frame(2)]
        accepted = await upload(client, session_id, good, field="frames")
        bad = await client.post(
            f"{API}/sessions/{session_id}/upload",
            json={"frames": [frame(3, format="tiff"), frame(4, imageData="not base64!!"), frame(5)]},
        )
        as_records = await client.post(f"{API}/sessions/{session_id}/upload", json={"records": good})
        await atoms_reach(client, session_id, 2)
        read_back = await stored(client, session_id)
    assert accepted["recordsReceived"] == 2
    assert bad.status_code == 400, bad.text
    body = bad.json()
    assert body["error"] == "Invalid data format"
    assert [(p["recordIndex"], p["field"]) for p in body["invalidRecords"]] == [(0, "format"), (1, "imageData")]
    assert body["invalidRecords"][0]["value"] == "tiff"
    assert as_records.status_code == 400 and "frames" in as_records.json()["error"]
    assert read_back == good


async def test_audio_buffers_are_checked_accepted_and_stored(server: Server) -> None:
    async with client_for(server, 6) as client:
        session = await start(client, "audio", batchSize=1)
        session_id = session["sessionId"]
        good = [buffer(1)]
        accepted = await upload(client, session_id, good, field="buffers")
        bad = await client.post(
            f"{API}/sessions/{session_id}/upload",
            json={"buffers": [buffer(2, audioData="%%%"), buffer(3), buffer(4, format="midi")]},
        )
        await atoms_reach(client, session_id, 1)
        read_back = await stored(client, session_id)
    assert accepted["recordsReceived"] == 1
    assert bad.status_code == 400, bad.text
    problems = bad.json()["invalidRecords"]
    assert [(p["recordIndex"], p["field"]) for p in problems] == [(0, "audioData"), (2, "format")]
    assert read_back == good


async def test_media_sessions_take_the_seeds_configuration_and_refuse_bad_fields(server: Server) -> None:
    async with client_for(server, 7) as client:
        video = await start(
            client,
            "video",
            frameExtractionMode="scene-changes",
            sceneThreshold=0.45,
            resolution={"width": 640, "height": 360},
            compressionQuality=70,
        )
        audio = await start(client, "audio", segmentationMode="speech-detection", maxSegmentDurationMs=8000)
        telemetry = await start(client, frameExtractionMode="keyframes")  # another type's fields: ignored
        refused = {
            field: await client.post(f"{API}/sessions/start", json={"sessionType": kind, field: value})
            for kind, field, value in (
                ("video", "frameExtractionMode", "every-other"),
                ("video", "compressionQuality", 101),
                ("video", "sceneThreshold", "high"),
                ("audio", "segmentationMode", "vibes"),
                ("audio", "silenceThresholdDb", 3),
                ("audio", "minSegmentDurationMs", 0),
            )
        }
    assert video["video"] == {
        "frameExtractionMode": "scene-changes",
        "frameInterval": 30,
        "frameRateFps": None,
        "resolution": {"width": 640, "height": 360},
        "compressionQuality": 70,
        "sceneThreshold": 0.45,
    }
    assert audio["audio"] == {
        "segmentationMode": "speech-detection",
        "silenceThresholdDb": -40.0,
        "minSegmentDurationMs": 1000,
        "maxSegmentDurationMs": 8000,
    }
    assert "video" not in telemetry and "audio" not in telemetry and "video" not in audio
    for field, response in refused.items():
        assert response.status_code == 400, (field, response.text)
        assert field in response.json()["error"] and response.json()["field"] == field


# -- 6. the seed's errors ------------------------------------------------------------------


async def test_unknown_session_is_the_seeds_404(server: Server) -> None:
    async with client_for(server, 7) as client:
        uploaded = await client.post(f"{API}/sessions/stream-session-invalid/upload", json={"records": SEED_RECORDS})
        looked_up = await client.get(f"{API}/sessions/stream-session-invalid/status")
    expected = {
        "error": "Session not found",
        "sessionId": "stream-session-invalid",
        "message": "No active session found with this ID",
        "suggestions": NOT_FOUND_SUGGESTIONS,
    }
    for response in (uploaded, looked_up):
        assert response.status_code == 404
        assert {k: v for k, v in response.json().items() if k != "code"} == expected


async def test_too_many_records_bad_bodies_and_a_foreign_tenant_id_are_refused(server: Server) -> None:
    async with client_for(server, 7) as client:
        session = await start(client)
        session_id = session["sessionId"]
        too_many = await client.post(
            f"{API}/sessions/{session_id}/upload", json={"records": [reading(n % 1000) for n in range(10_001)]}
        )
        not_json = await client.post(
            f"{API}/sessions/{session_id}/upload", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        empty = await client.post(f"{API}/sessions/{session_id}/upload", json={"records": []})
        no_time = await client.post(f"{API}/sessions/{session_id}/upload", json={"records": [{"values": {}}]})
        foreign = await client.post(f"{API}/sessions/start", json={"sessionType": "telemetry", "tenantId": 8})
        bad_type = await client.post(f"{API}/sessions/start", json={"sessionType": "hologram"})
        unauthenticated = await client.post(
            f"{API}/sessions/start", json={"sessionType": "telemetry"}, headers={"Authorization": ""}
        )
        after = await status(client, session_id)
    assert too_many.status_code == 413, too_many.text
    body = too_many.json()
    assert body["error"] == "Batch size exceeded"
    assert body["maxBatchSize"] == 10_000 and body["receivedBatchSize"] == 10_001
    assert body["message"] == "Batch exceeds maximum allowed size"
    assert body["suggestion"] == "Split data into smaller batches"
    assert not_json.status_code == 400
    assert empty.status_code == 400
    assert no_time.status_code == 400
    assert no_time.json()["invalidRecords"][0] | {"message": ""} == {
        "recordIndex": 0,
        "field": "timestamp",
        "value": None,
        "expectedType": "datetime",
        "message": "",
    }
    assert foreign.status_code == 403, foreign.text
    assert bad_type.status_code == 400
    assert unauthenticated.status_code == 401
    assert after["statistics"]["totalRecordsReceived"] == 0


async def test_the_tenant_rate_limit_answers_the_seeds_429(serve: Callable[..., Server]) -> None:
    limited = serve(None, SLUICEGATE_JWT_SECRET=SECRET, SLUICEGATE_RATE_LIMIT_TENANT="5/minute")
    async with client_for(limited, 1) as client:
        session = await start(client)
        answers = [await client.get(f"{API}/sessions/{session['sessionId']}/status") for _ in range(5)]
        async with client_for(limited, 2) as other:
            elsewhere = await other.get(f"{API}/dlq")
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429]
    refused = answers[-1]
    body = refused.json()
    assert body["error"] == "Rate limit exceeded"
    assert body["limit"] == 5 and body["window"] == "1 minute"
    assert isinstance(body["retryAfter"], int) and 0 < body["retryAfter"] <= 60
    assert body["message"] == "Too many requests to streaming API"
    assert int(refused.headers["Retry-After"]) == body["retryAfter"]
    assert elsewhere.status_code == 200  # another tenant has its own budget


# -- 7. lifecycle --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"timeoutMs": -1}', "timeoutMs"),
        (b'{"waitForCompletion": "soon"}', "waitForCompletion"),
        (b"null", None),
        (b"[1, 2]", None),
        (b'{"timeoutMs": ', None),
        (b"\xff\xfe", None),
    ],
)
async def test_a_bad_end_body_is_a_400_naming_the_problem_and_the_session_goes_on(
    server: Server, body: bytes, field: str | None
) -> None:
    async with client_for(server, 1) as client:
        started = (await client.post(f"{API}/sessions/start", json={"sessionType": "telemetry"})).json()
        response = await client.post(f"{API}/sessions/{started['sessionId']}/end", content=body)
        assert response.status_code == 400, response.text
        answer = response.json()
        assert answer["code"] == "invalid_argument" and answer["error"] == "Invalid end request"
        if field is not None:
            assert [f["field"] for f in answer["fields"]] == [field]
        assert (await status(client, started["sessionId"]))["status"] == "active"  # nothing happened to it


async def test_pause_resume_end_and_what_each_state_refuses(server: Server) -> None:
    async with client_for(server, 9) as client:
        session = await start(client, batchSize=2)
        session_id = session["sessionId"]
        url = f"{API}/sessions/{session_id}"
        await upload(client, session_id, [reading(0), reading(1)])

        paused = await client.post(f"{url}/pause")
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
        refused = await client.post(f"{url}/upload", json={"records": [reading(2)]})
        assert refused.status_code == 409, refused.text
        assert refused.json() | {"message": ""} == {
            "error": "Session state conflict",
            "code": "conflict",
            "sessionId": session_id,
            "status": "paused",
            "message": "",
            "suggestion": "Resume the session to upload data",
        }
        assert (await client.post(f"{url}/pause")).status_code == 409  # already paused
        assert (await status(client, session_id))["status"] == "paused"

        resumed = await client.post(f"{url}/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] == "active"
        assert (await client.post(f"{url}/resume")).status_code == 409  # not paused
        await upload(client, session_id, [reading(2), reading(3)])

        ended = await client.post(f"{url}/end")
        assert ended.status_code == 200
        assert ended.json()["status"] in ("completing", "completed")

        async def completed() -> dict[str, Any] | None:
            current = await status(client, session_id)
            return current if current["status"] == "completed" else None

        done = await eventually(completed)
        assert done["statistics"]["totalAtomsCreated"] == 4
        late = await client.post(f"{url}/upload", json={"records": [reading(9)]})
        assert late.status_code == 409 and late.json()["status"] == "completed"
        assert (await client.post(f"{url}/pause")).status_code == 409
        assert (await client.post(f"{url}/resume")).status_code == 409
        again = await client.post(f"{url}/end")
        assert again.status_code == 200 and again.json()["status"] == "completed"
        job = (await client.get(f"{API}/jobs/{session['jobId']}/status")).json()
        assert job["status"] == "completed" and job["result"]["atomsCreated"] == 4
        cancel_finished = await client.post(f"{API}/jobs/{session['jobId']}/cancel")
        assert cancel_finished.status_code == 409
        assert len(await stored(client, session_id)) == 4


async def cancelled_mid_session(client: httpx.AsyncClient) -> tuple[dict[str, Any], httpx.Response]:
    """A session with two processed batches and one record waiting, then cancelled."""
    session = await start(client, batchSize=2, maxBatchDelayMs=600_000)
    await upload(client, session["sessionId"], [reading(n) for n in range(5)])
    await atoms_reach(client, session["sessionId"], 4)
    cancelled = await client.post(f"{API}/jobs/{session['jobId']}/cancel")
    return session, cancelled


async def test_cancelling_a_job_mid_session_keeps_what_was_processed_and_refuses_uploads(server: Server) -> None:
    async with client_for(server, 10) as client:
        session, cancelled = await cancelled_mid_session(client)
        session_id = session["sessionId"]
        assert cancelled.status_code == 200, cancelled.text
        body = cancelled.json()
        assert body["jobId"] == session["jobId"] and body["status"] == "cancelled"
        assert body["partialResult"] == {"atomsCreated": 4, "itemsProcessed": 4}
        parse_time(body["cancelledAt"])

        after = await status(client, session_id)
        late = await client.post(f"{API}/sessions/{session_id}/upload", json={"records": [reading(9)]})
        again = await client.post(f"{API}/jobs/{session['jobId']}/cancel")
        job = (await client.get(f"{API}/jobs/{session['jobId']}/status")).json()
        events = await read_events(client, f"{API}/sessions/{session_id}/events", 100, headers=auth(10))
        kept = await stored(client, session_id)
    assert after["status"] == "cancelled"
    assert after["statistics"]["totalAtomsCreated"] == 4
    assert late.status_code == 409 and late.json()["status"] == "cancelled"
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert job["status"] == "cancelled"
    assert events[-1].event == "session-cancelled" and data(events[-1])["atomsCreated"] == 4
    assert kept == [reading(n) for n in range(4)]


async def test_job_status_of_a_cancelled_job_reports_what_was_processed(server: Server) -> None:
    async with client_for(server, 11) as client:
        session, cancelled = await cancelled_mid_session(client)
        assert cancelled.json()["partialResult"]["atomsCreated"] == 4
        job = (await client.get(f"{API}/jobs/{session['jobId']}/status")).json()
    assert job["status"] == "cancelled"
    assert job["partialResult"] == {"atomsCreated": 4, "itemsProcessed": 4}


# -- 8. retries, the dead-letter queue and a manual retry ----------------------------------


async def test_failing_batches_are_retried_then_dead_lettered_then_retried_by_hand(
    serve: Callable[..., Server],
) -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    down = serve(
        None,
        SLUICEGATE_JWT_SECRET=SECRET,
        SLUICEGATE_OBJECT_STORE_URL=f"s3://{BUCKET}?endpoint={endpoint}&region=us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    moto_server: ThreadedMotoServer | None = None
    records = [reading(0), reading(1)]
    try:
        async with client_for(down, 1) as client, client_for(down, 2) as stranger:
            session = await start(client, batchSize=2, maxRetries=2, retryDelayMs=50, retryBackoffMultiplier=2)
            session_id = session["sessionId"]
            await upload(client, session_id, records)
            events = await read_events(client, f"{API}/sessions/{session_id}/events", 5, headers=auth(1))
            assert [e.event for e in events] == ["session-started", "batch-received", "error", "error", "error"]
            batch_id = data(events[1])["batchId"]
            errors = [data(e) for e in events[2:]]
            assert {e["errorCode"] for e in errors} == {"BATCH_FAILED"}
            assert {e["batchId"] for e in errors} == {batch_id}
            assert [e["retrying"] for e in errors] == [True, True, False]
            assert [f"attempt {n}" in e["message"] for n, e in enumerate(errors, 1)] == [True, True, True]

            async def dead_lettered() -> list[dict[str, Any]] | None:
                listed: list[dict[str, Any]] = (await client.get(f"{API}/dlq")).json()["batches"]
                return listed or None

            dead = await eventually(dead_lettered)
            assert len(dead) == 1
            assert dead[0]["batchId"] == batch_id and dead[0]["sessionId"] == session_id
            assert dead[0]["recordCount"] == 2 and dead[0]["attempts"] == 3
            assert dead[0]["lastError"]
            assert (await status(client, session_id))["statistics"]["totalAtomsCreated"] == 0
            assert (await stranger.get(f"{API}/dlq")).json() == {"batches": []}
            assert (await stranger.post(f"{API}/dlq/{batch_id}/retry")).status_code == 404

            moto_server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            moto_server.start()
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)

            retried = await client.post(f"{API}/dlq/{batch_id}/retry")
            assert retried.status_code == 202, retried.text
            assert retried.json() == {"batchId": batch_id, "sessionId": session_id, "status": "queued"}
            await atoms_reach(client, session_id, 2, within=15 * UNIT)
            assert (await client.get(f"{API}/dlq")).json() == {"batches": []}
            assert (await client.post(f"{API}/dlq/{batch_id}/retry")).status_code == 404  # no longer dead

            ended = await client.post(
                f"{API}/sessions/{session_id}/end", json={"waitForCompletion": True, "timeoutMs": 5000}
            )
            assert ended.json()["status"] == "completed", ended.text
            job = (await client.get(f"{API}/jobs/{session['jobId']}/status")).json()
            assert job["result"]["finalHash"] == final_hash(records)
            assert await stored(client, session_id) == records
    finally:
        down.stop()
        if moto_server is not None:
            moto_server.stop()


# -- 9. kill -9 ----------------------------------------------------------------------------

KILLED_RECORDS = [reading(n) for n in range(300)]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three acknowledged uploads of 100 records, nothing processed, ``kill -9``, a restart
    on the same data, a short look at the recovered session, then its end: what a client saw."""
    data_dir = tmp_path_factory.mktemp("killed")
    env = {"SLUICEGATE_JWT_SECRET": SECRET}
    seen: dict[str, Any] = {}
    first = start_server(None, data_dir, env)
    try:
        with httpx.Client(base_url=first.url, headers=auth(1), timeout=10 * UNIT) as client:
            response = client.post(
                f"{API}/sessions/start",
                json={"sessionType": "telemetry", "batchSize": 10_000, "maxBatchDelayMs": 600_000},
            )
            session = seen["session"] = response.json()
            bodies = [orjson.dumps({"records": KILLED_RECORDS[k : k + 100]}) for k in range(0, 300, 100)]
            seen["bytes"] = canonical_size(KILLED_RECORDS)
            seen["uploads"] = [
                client.post(
                    f"{API}/sessions/{session['sessionId']}/upload",
                    content=body,
                    headers={"Content-Type": "application/json"},
                ).status_code
                for body in bodies
            ]
            seen["before"] = client.get(f"{API}/sessions/{session['sessionId']}/status").json()
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.stop()
    second = start_server(None, data_dir, env)
    try:
        with httpx.Client(base_url=second.url, headers=auth(1), timeout=10 * UNIT) as client:
            url = f"{API}/sessions/{session['sessionId']}"
            looks: list[dict[str, Any]] = []
            deadline = time.monotonic() + 0.4 * UNIT
            while time.monotonic() < deadline:  # the recovered session, as it settles
                looks.append(client.get(f"{url}/status").json())
                time.sleep(0.02)
            seen["recovered"] = looks
            seen["ended"] = client.post(f"{url}/end", json={"waitForCompletion": True, "timeoutMs": 10_000})
            seen["records"] = client.get(f"{url}/records")
            seen["job"] = client.get(f"{API}/jobs/{session['jobId']}/status").json()
            seen["after"] = client.get(f"{url}/status").json()
    finally:
        second.stop()
    return seen


def test_kill_9_after_acknowledged_uploads_loses_and_duplicates_nothing(killed: dict[str, Any]) -> None:
    assert killed["uploads"] == [200, 200, 200]
    assert killed["before"]["statistics"]["totalRecordsReceived"] == 300
    assert killed["before"]["statistics"]["totalAtomsCreated"] == 0  # nothing was processed before the kill
    assert killed["recovered"][-1]["status"] == "active"
    assert killed["recovered"][-1]["statistics"]["totalRecordsReceived"] == 300
    ended = killed["ended"]
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "completed"
    assert ended.json()["finalStatistics"]["totalRecordsReceived"] == 300
    assert killed["records"].status_code == 200
    read_back = [orjson.loads(line) for line in killed["records"].content.splitlines()]
    assert len(read_back) == 300
    assert read_back == KILLED_RECORDS  # every acknowledged record, once, in time order
    job = killed["job"]
    assert job["status"] == "completed"
    assert job["result"]["atomsCreated"] == 300
    assert job["result"]["finalHash"] == final_hash(KILLED_RECORDS)
    assert killed["after"]["status"] == "completed"
    assert killed["after"]["statistics"]["totalRecordsReceived"] == 300
    assert killed["after"]["statistics"]["totalBatchesReceived"] == 1
    assert killed["after"]["statistics"]["totalAtomsCreated"] == 300


def test_after_kill_9_the_recovered_batch_is_counted_once(killed: dict[str, Any]) -> None:
    atoms = [look["statistics"]["totalAtomsCreated"] for look in killed["recovered"]]
    queued = [look["statistics"]["recordsQueued"] for look in killed["recovered"]]
    assert max(atoms) <= 300 and min(queued) >= 0, (atoms, queued)
    final = killed["ended"].json()["finalStatistics"]
    assert final["totalAtomsCreated"] == 300 and final["totalBatchesReceived"] == 1


def test_after_kill_9_data_received_bytes_still_counts_the_acknowledged_uploads(killed: dict[str, Any]) -> None:
    assert killed["before"]["statistics"]["dataReceivedBytes"] == killed["bytes"]
    assert killed["recovered"][-1]["statistics"]["dataReceivedBytes"] == killed["bytes"]


# -- 10. tenants ---------------------------------------------------------------------------


async def test_another_tenant_gets_404_everywhere(server: Server) -> None:
    async with client_for(server, 12) as owner, client_for(server, 13) as stranger:
        session = await start(owner, batchSize=1)
        session_id = session["sessionId"]
        answer = await upload(owner, session_id, [reading(0)])
        await atoms_reach(owner, session_id, 1)
        url = f"{API}/sessions/{session_id}"
        attempts = {
            "status": await stranger.get(f"{url}/status"),
            "upload": await stranger.post(f"{url}/upload", json={"records": [reading(1)]}),
            "events": await stranger.get(f"{url}/events"),
            "end": await stranger.post(f"{url}/end", json={"waitForCompletion": True, "timeoutMs": 100}),
            "pause": await stranger.post(f"{url}/pause"),
            "resume": await stranger.post(f"{url}/resume"),
            "records": await stranger.get(f"{url}/records"),
            "job status": await stranger.get(f"{API}/jobs/{session['jobId']}/status"),
            "job cancel": await stranger.post(f"{API}/jobs/{session['jobId']}/cancel"),
            "dlq retry": await stranger.post(f"{API}/dlq/{answer['batchId']}/retry"),
        }
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{server.ws_url}{url}/ws", additional_headers=auth(13)):
                pass
        owners = await status(owner, session_id)
        still = await upload(owner, session_id, [reading(2)])
    assert {name: r.status_code for name, r in attempts.items()} == dict.fromkeys(attempts, 404)
    for name in ("status", "upload", "events", "end", "pause", "resume", "records"):
        body = attempts[name].json()
        assert body["error"] == "Session not found" and body["suggestions"] == NOT_FOUND_SUGGESTIONS, name
    assert refused.value.response.status_code == 404
    assert owners["status"] == "active" and owners["statistics"]["totalRecordsReceived"] == 1
    assert still["recordsReceived"] == 1


# -- 11. WebSocket -------------------------------------------------------------------------


async def test_websocket_uploads_and_events_and_errors_keep_the_socket_open(server: Server) -> None:
    async with client_for(server, 14) as client:
        session = await start(client, batchSize=2)
        session_id = session["sessionId"]
        url = f"{server.ws_url}{API}/sessions/{session_id}/ws"
        async with connect(url, additional_headers=auth(14)) as ws:
            await ws.send(orjson.dumps({"type": "telemetry", "records": SEED_RECORDS}).decode())
            first = await receive_until(ws, lambda got: {"upload-accepted", "progress"} <= set(types(got)))
            await ws.send(orjson.dumps({"type": "telemetry", "records": [{"values": {"temperature": 1}}]}).decode())
            refused = await receive_until(ws, lambda got: "error" in types(got))
            await ws.send(orjson.dumps({"type": "telemetry", "rows": []}).decode())
            malformed = await receive_until(ws, lambda got: "error" in types(got))
            await ws.send(orjson.dumps({"type": "telemetry", "records": [reading(20), reading(30)]}).decode())
            second = await receive_until(ws, lambda got: {"upload-accepted", "progress"} <= set(types(got)))
        final = await atoms_reach(client, session_id, 4)
    accepted = next(m for m in first if m["type"] == "upload-accepted")
    assert accepted["sessionId"] == session_id and accepted["recordsReceived"] == 2
    assert accepted["status"] == "active" and accepted["batchId"].startswith("batch-")
    processed = next(m for m in first if m["type"] == "batch-processed")
    assert processed["batchId"] == accepted["batchId"] and processed["atomsCreated"] == 2
    assert processed["processingTimeMs"] >= 0
    assert "batch-received" in types(first)
    error = next(m for m in refused if m["type"] == "error")
    assert error["error"] == "Invalid data format"
    assert error["invalidRecords"][0]["recordIndex"] == 0 and error["invalidRecords"][0]["field"] == "timestamp"
    assert next(m for m in malformed if m["type"] == "error")["errorCode"] == "invalid_argument"
    assert next(m for m in second if m["type"] == "upload-accepted")["recordsReceived"] == 2
    assert final["statistics"]["totalRecordsReceived"] == 4
