"""Ingestion benchmark: telemetry over HTTP at batch sizes 100, 1,000 and 10,000.

Starts ``sluicegate serve`` (fsync on unless ``--no-fsync``; the whole machine, its
ingest workers included, unless ``--pin`` keeps it to CPU 0 and this process to CPU 1).
From this process it starts one session per batch size (``batchSize`` equal to
the upload size) and runs ``--connections`` keep-alive HTTP/1.1 connections, each
uploading ~106-byte telemetry records (the second seed's shape) back to back for
``--seconds``. An upload counts when answered 200: its records were in the spool
(written and fdatasync'ed). Then it ends the session with ``waitForCompletion`` and
times the processing that was still queued. Prints one JSON line, each size beside the
seed's table as the issue reads it (1,000, 8,333 and 50,000 records/s).

    .venv/bin/python bench/ingest.py
    .venv/bin/python bench/ingest.py --sizes 10000 --connections 4 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server import start_server  # noqa: E402 -- the same launcher the tests use

from bench.races import Poster  # noqa: E402 -- the same raw keep-alive client
from sluicegate.clock import SystemClock  # noqa: E402
from sluicegate.security.identity import TokenService  # noqa: E402

SECRET = "bench-jwt-secret-" + "x" * 32
SEED_TABLE = {100: 1_000, 1000: 8_333, 10_000: 50_000}  # the issue's reading of the seed's table


def _records(count: int) -> list[dict[str, Any]]:
    start = datetime(2025, 1, 20, 10, 30, tzinfo=UTC)
    return [
        {
            "timestamp": (start + timedelta(milliseconds=10 * i))
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "values": {"temperature": 72.5 + i % 10, "humidity": 45.2, "pressure": 1013.25},
        }
        for i in range(count)
    ]


def _request(host: str, session_id: str, token: str, body: bytes) -> bytes:
    return (
        f"POST /api/streaming/sessions/{session_id}/upload HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _run_size(host: str, port: int, token: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=headers, timeout=600) as client:
        session = (
            await client.post(
                "/api/streaming/sessions/start",
                json={"sessionType": "telemetry", "batchSize": size, "maxBatchDelayMs": 200, "maxConcurrentBatches": 8},
            )
        ).json()
        body = orjson.dumps({"records": _records(size)})
        loop = asyncio.get_running_loop()
        deadline = time.perf_counter() + args.seconds
        posters = []
        started = time.perf_counter()
        for _ in range(args.connections):
            done: asyncio.Future[None] = loop.create_future()
            poster = Poster(_request(host, session["sessionId"], token, body), deadline, done)
            await loop.create_connection(lambda p=poster: p, host, port)  # type: ignore[misc]
            posters.append(poster)
        await asyncio.wait([p.done for p in posters], timeout=args.seconds + 120)
        elapsed = time.perf_counter() - started
        for poster in posters:
            poster.transport.close()
        uploads = sum(p.ok for p in posters)
        latencies = sorted(x for p in posters for x in p.latencies)
        drain_started = time.perf_counter()
        ended = (
            await client.post(
                f"/api/streaming/sessions/{session['sessionId']}/end",
                json={"waitForCompletion": True, "timeoutMs": 600_000},
            )
        ).json()
        drain = time.perf_counter() - drain_started
    records = uploads * size
    total_seconds = elapsed + drain
    return {
        "batch_size": size,
        "connections": args.connections,
        "uploads": uploads,
        "failed": sum(p.failed for p in posters),
        "acknowledged_records_per_s": round(records / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2) if latencies else None,
        "processed_records_per_s": round(records / total_seconds),
        "drain_seconds": round(drain, 2),
        "final_status": ended.get("status"),
        "seed_table_records_per_s": SEED_TABLE.get(size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated records per upload")
    parser.add_argument("--connections", type=int, default=4, help="concurrent uploaders")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to upload, per size")
    parser.add_argument("--no-fsync", action="store_true", help="acknowledge after write(), without fdatasync")
    parser.add_argument(
        "--pin", action="store_true", help="pin the server (and its workers) to CPU 0 and this process to CPU 1"
    )
    parser.add_argument("--workers", type=int, default=None, help="SLUICEGATE_INGEST_WORKERS (default: one per CPU)")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    env = {
        "SLUICEGATE_JWT_SECRET": SECRET,
        "SLUICEGATE_RATE_LIMIT_TENANT": "100000000/minute",
        "SLUICEGATE_INGEST_FSYNC": "false" if args.no_fsync else "true",
        "SLUICEGATE_INGEST_MAX_QUEUED_RECORDS": "50000000",
    }
    if args.workers is not None:
        env["SLUICEGATE_INGEST_WORKERS"] = str(args.workers)
    token, _ = TokenService(SECRET, clock=SystemClock()).issue(tenant=1, subject="bench")
    results = []
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-", dir=os.environ.get("BENCH_DIR")) as data_dir:
        server = start_server(None, Path(data_dir), env)
        try:
            if args.pin and len(cpus) >= 2:
                os.sched_setaffinity(server.process.pid, {cpus[0]})
                os.sched_setaffinity(0, {cpus[1]})
            for size in (int(s) for s in args.sizes.split(",")):
                results.append(uvloop.run(_run_size(server.host, server.port, token, size, args)))
        finally:
            server.stop()
    print(
        orjson.dumps(
            {
                "bench": "ingest",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "server_pinned_to_one_cpu": args.pin and len(cpus) >= 2,
                "ingest_workers": args.workers if args.workers is not None else os.cpu_count(),
                "fsync": not args.no_fsync,
                "record_bytes": len(orjson.dumps(_records(1)[0])),
                "results": results,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
