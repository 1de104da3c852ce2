"""Race collection benchmark: durable acknowledged points per second, then flush throughput.

Starts ``sluicegate serve`` pinned to CPU 0 (file object store, fsync on unless
``--no-fsync``), opens one race session, and from this process (pinned to CPU 1) runs
``--connections`` concurrent posters on raw keep-alive HTTP/1.1 connections, each
posting one ~100-byte telemetry point at a time to
``POST /api/streams/races/{stream}/data`` for ``--seconds``. Every 200 counts: the point
was in the spool (written and fdatasync'ed) before the answer. Then it closes the
session, which compresses the spool with zstd and writes the archive to the object
store, and times that. Prints one JSON line.

    .venv/bin/python bench/races.py
    .venv/bin/python bench/races.py --connections 128 --seconds 10
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
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server import start_server  # noqa: E402 -- the same launcher the tests use

KEY, SECRET, STREAM = "sk-bench-admin", "bench-secret", "bench-driver"


class Poster(asyncio.Protocol):
    """One keep-alive connection posting a point, waiting for its answer, and posting again."""

    def __init__(self, request: bytes, deadline: float, done: asyncio.Future[None]) -> None:
        self.request = request
        self.deadline = deadline
        self.done = done
        self.ok = 0
        self.failed = 0
        self.latencies: list[float] = []
        self._buffer = b""
        self._sent = 0.0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self._sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self._buffer[:head_end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self._buffer) < end:
                return
            self._buffer = self._buffer[end:]
            now = time.perf_counter()
            if head.startswith(b"HTTP/1.1 200"):
                self.ok += 1
                self.latencies.append(now - self._sent)
            else:
                self.failed += 1
            if now < self.deadline:
                self._send()
            elif not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _request(host: str) -> bytes:
    body = orjson.dumps(
        {
            "data": {"speed": 212.4, "rpm": 11850, "gear": 6, "lap": 17, "sector": 2, "fuel": 41.5},
            "type": "telemetry",
            "platform": "acc",
        }
    )
    return (
        f"POST /api/streams/races/{STREAM}/data?secret={SECRET} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _ingest(host: str, port: int, connections: int, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = time.perf_counter() + seconds
    posters = []
    started = time.perf_counter()
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        poster = Poster(_request(host), deadline, done)
        await loop.create_connection(lambda p=poster: p, host, port)  # type: ignore[misc]
        posters.append(poster)
    await asyncio.wait([p.done for p in posters], timeout=seconds + 30)
    elapsed = time.perf_counter() - started
    for poster in posters:
        poster.transport.close()
    latencies = sorted(x for p in posters for x in p.latencies)
    ok = sum(p.ok for p in posters)
    return {
        "connections": connections,
        "acknowledged": ok,
        "failed": sum(p.failed for p in posters),
        "acknowledged_per_s": round(ok / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2) if latencies else None,
    }


async def _run(host: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers={"X-API-Key": KEY}, timeout=600) as client:
        session = (await client.post("/api/races/sessions", json={"stream": STREAM})).json()
        ingest = await _ingest(host, port, args.connections, args.seconds)
        before = (await client.get(f"/api/races/sessions/{session['id']}")).json()
        started = time.perf_counter()
        closed = await client.post(f"/api/races/sessions/{session['id']}/close")
        flush_seconds = time.perf_counter() - started
    after = closed.json()
    raw_mb = before["bytes"] / 1e6
    return {
        "ingest": ingest,
        "flush": {
            "points": after["data_points"],
            "jsonl_mb": round(raw_mb, 2),
            "archives": len(after["archived_keys"]),
            "seconds": round(flush_seconds, 3),
            "mb_per_s": round(raw_mb / flush_seconds, 1),
            "state": after["state"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=64, help="concurrent posters")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to post")
    parser.add_argument("--no-fsync", action="store_true", help="acknowledge after write(), without fdatasync")
    parser.add_argument(
        "--baseline", action="store_true", help="serve bench.races_baseline (no durability, no framework) instead"
    )
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    env = {
        "SLUICEGATE_API_KEYS": f"{KEY}:admin",
        "SLUICEGATE_AX_PARSER_SECRET": SECRET,
        "SLUICEGATE_RACE_IDLE_SECONDS": "3600",
        "SLUICEGATE_RACE_CLOSE_WAIT_SECONDS": "600",
        "SLUICEGATE_RACE_FSYNC": "false" if args.no_fsync else "true",
    }
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-", dir=os.environ.get("BENCH_DIR")) as data_dir:
        server = start_server("bench.races_baseline:create_app" if args.baseline else None, Path(data_dir), env)
        try:
            if len(cpus) >= 2:
                os.sched_setaffinity(server.process.pid, {cpus[0]})
                os.sched_setaffinity(0, {cpus[1]})
            result = uvloop.run(_run(server.host, server.port, args))
        finally:
            server.stop()
    print(
        orjson.dumps(
            {
                "bench": "races",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "server_pinned_to_one_cpu": len(cpus) >= 2,
                "server": "bare ASGI baseline" if args.baseline else "sluicegate",
                "fsync": not args.no_fsync and not args.baseline,
                **result,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
