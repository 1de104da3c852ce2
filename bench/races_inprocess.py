"""The race route's own cost, in process: no HTTP server, no sockets.

Builds the real app (``sluicegate.app.create_app``: spool log, SQLite, file object
store, in a temporary folder), opens a race session through the app, then drives
``POST /api/streams/races/{stream}/data`` as ASGI calls from ``--concurrency`` tasks
(``--requests`` in all; each task calls, waits for its answer, calls again, as the
HTTP benchmark's connections do) and reports the CPU time of the event loop's thread
per request (``time.thread_time``; the spool's writes and fsyncs run in other
threads), and the wall-clock rate. ``--floor`` drives ``bench.races_baseline`` the same
way. ``--without`` switches parts off in this process only, to see what each costs:

- ``metrics``: Prometheus counter and histogram updates become no-ops;
- ``processor``: the session's processor (which follows the log) is not started;
- ``log``: the spool's append answers at once, writing nothing (what is left is the
  route without its log; the difference is the log's cost on the event loop).

Under ``valgrind --tool=callgrind`` (with ``--requests`` small) this is the loop the
instruction counts of docs/performance.md come from. Prints one JSON line.

    .venv/bin/python bench/races_inprocess.py
    .venv/bin/python bench/races_inprocess.py --floor
    .venv/bin/python bench/races_inprocess.py --without metrics
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.races_baseline for --floor

# The HTTP benchmark's key, secret and point (bench/races.py), written out here so that this
# file also runs against an earlier version of the code (PYTHONPATH=<its src>).
KEY, SECRET, STREAM = "sk-bench-admin", "bench-secret", "bench-inprocess"
POINT = {
    "data": {"speed": 212.4, "rpm": 11850, "gear": 6, "lap": 17, "sector": 2, "fuel": 41.5},
    "type": "telemetry",
    "platform": "acc",
}


def _switch_off(parts: list[str]) -> None:
    if "metrics" in parts:
        import prometheus_client.metrics as metrics

        metrics.Counter.inc = lambda self, amount=1, exemplar=None: None  # type: ignore[method-assign]
        metrics.Histogram.observe = lambda self, amount, exemplar=None: None  # type: ignore[method-assign]
    if "processor" in parts:
        from sluicegate.services.races.service import RaceService

        async def no_processor(self: Any, lease: Any) -> None:
            await asyncio.Event().wait()  # holds the lease, follows nothing

        RaceService._process = no_processor  # type: ignore[method-assign]
    if "log" in parts:
        from sluicegate.engines.log import Appended
        from sluicegate.engines.log.spool import SpoolLog

        counts: dict[str, int] = {}
        real_append = SpoolLog.append

        async def append(self: Any, log: str, records: bytes, count: int, *, meta: bytes = b"") -> Appended:
            if not log.startswith("races/"):
                return await real_append(self, log, records, count, meta=meta)
            first = counts.get(log, 0)
            counts[log] = first + count
            return Appended(first, first + count)

        SpoolLog.append = append  # type: ignore[method-assign]


async def _call(app: Any, method: str, path: str, body: bytes, query: bytes = b"") -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-api-key", KEY.encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False
    status = 0
    answer = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            answer.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(answer)


async def _lifespan(app: Any) -> tuple[asyncio.Queue[dict[str, Any]], asyncio.Task[None]]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.get_running_loop().create_future()

    async def send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup") and not started.done():
            started.set_result(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    message = await started
    assert message["type"] == "lifespan.startup.complete", message
    return inbox, task


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.floor:
        from bench.races_baseline import create_app
    else:
        from sluicegate.app import create_app
    app = create_app()
    inbox, lifespan = await _lifespan(app)
    try:
        if not args.floor:
            status, answer = await _call(app, "POST", "/api/races/sessions", orjson.dumps({"stream": STREAM}))
            assert status == 201, answer
        path, query, body = f"/api/streams/races/{STREAM}/data", f"secret={SECRET}".encode(), orjson.dumps(POINT)
        for _ in range(200):  # warm up
            await _call(app, "POST", path, body, query)
        per_task = args.requests // args.concurrency
        failed = 0

        async def poster() -> None:
            nonlocal failed
            for _ in range(per_task):
                status, _ = await _call(app, "POST", path, body, query)
                failed += status != 200

        cpu, wall = time.thread_time(), time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(args.concurrency)))
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan
    requests = per_task * args.concurrency
    return {
        "requests": requests,
        "failed": failed,
        "loop_cpu_us_per_request": round(cpu / requests * 1e6, 2),
        "requests_per_s": round(requests / wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=64, help="tasks posting at once (the HTTP bench's 64)")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--floor", action="store_true", help="drive bench.races_baseline instead")
    parser.add_argument(
        "--without", default="", help="comma-separated parts switched off here: metrics, processor, log"
    )
    args = parser.parse_args()
    parts = [p for p in args.without.split(",") if p]
    _switch_off(parts)
    with tempfile.TemporaryDirectory(prefix="sluicegate-inprocess-", dir=os.environ.get("BENCH_DIR")) as folder:
        os.environ.update(
            {
                "SLUICEGATE_DATA_DIR": folder,
                "SLUICEGATE_API_KEYS": f"{KEY}:admin",
                "SLUICEGATE_AX_PARSER_SECRET": SECRET,
                "SLUICEGATE_RACE_IDLE_SECONDS": "3600",
                "SLUICEGATE_RACE_FSYNC": "false" if args.no_fsync else "true",
                "SLUICEGATE_LOG_LEVEL": "warning",
            }
        )
        result = uvloop.run(_run(args))
    print(
        orjson.dumps(
            {
                "bench": "races_inprocess",
                "server": "bare ASGI baseline" if args.floor else "sluicegate",
                "fsync": not args.no_fsync and not args.floor,
                "concurrency": args.concurrency,
                "without": parts,
                **result,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
