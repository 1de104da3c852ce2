"""Race collection benchmark: durable acknowledged points per second, then flush throughput.

Starts ``--nodes`` single-process ``sluicegate serve`` nodes (default 1; file object
store and one SQLite database shared by the nodes, fsync on unless ``--no-fsync``), each
pinned to a CPU of its own (with one node: the server on CPU 0, the load on CPU 1),
opens ``--streams`` race sessions (default one per node) spread over the nodes, and
posts one ~100-byte telemetry point at a time to ``POST /api/streams/races/{stream}/data``
for ``--seconds`` over ``--connections`` keep-alive HTTP/1.1 connections, each stream's
posts going to the node that holds it (as a load balancer routing by stream would).
The load is ``wrk`` when it is installed (one process per stream), else this process's
raw-socket posters (``--load python``). Every 200 counts: the point was in the spool
(written and fdatasync'ed) before the answer. Then it closes the sessions, which
compresses the spools with zstd and writes the archives to the object store, and times
that. ``--baseline`` serves ``bench.races_baseline`` instead: the same body parsed and
answered by a bare ASGI app, no framework and no durability (the floor). Prints one
JSON line.

    .venv/bin/python bench/races.py
    .venv/bin/python bench/races.py --nodes 2
    .venv/bin/python bench/races.py --baseline --nodes 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import statistics
import subprocess
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

from tests.s3 import free_port  # noqa: E402
from tests.server import Server, start_server  # noqa: E402 -- the same launcher the tests use

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


def _body() -> bytes:
    return orjson.dumps(
        {
            "data": {"speed": 212.4, "rpm": 11850, "gear": 6, "lap": 17, "sector": 2, "fuel": 41.5},
            "type": "telemetry",
            "platform": "acc",
        }
    )


def _request(host: str, stream: str) -> bytes:
    body = _body()
    return (
        f"POST /api/streams/races/{stream}/data?secret={SECRET} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _python_load(targets: list[tuple[str, int, str]], connections: int, seconds: float) -> dict[str, Any]:
    """``connections`` posters from this process, spread over the streams (each posting
    to the node that holds its stream)."""
    loop = asyncio.get_running_loop()
    deadline = time.perf_counter() + seconds
    posters = []
    started = time.perf_counter()
    for i in range(connections):
        host, port, stream = targets[i % len(targets)]
        done: asyncio.Future[None] = loop.create_future()
        poster = Poster(_request(host, stream), deadline, done)
        await loop.create_connection(lambda p=poster: p, host, port)  # type: ignore[misc]
        posters.append(poster)
    await asyncio.wait([p.done for p in posters], timeout=seconds + 30)
    elapsed = time.perf_counter() - started
    for poster in posters:
        poster.transport.close()
    latencies = sorted(x for p in posters for x in p.latencies)
    ok = sum(p.ok for p in posters)
    return {
        "acknowledged": ok,
        "failed": sum(p.failed for p in posters),
        "acknowledged_per_s": round(ok / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2) if latencies else None,
    }


def _wrk_milliseconds(value: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    number = re.match(r"([0-9.]+)([a-z]+)", value)
    assert number is not None, value
    return float(number.group(1)) * units[number.group(2)]


def _wrk_load(targets: list[tuple[str, int, str]], connections: int, seconds: float) -> dict[str, Any]:
    """One ``wrk`` process per stream (a C load generator: the Python posters cost the
    machine about as much CPU per request as the server), each with its share of the
    connections; answers other than 2xx are counted apart."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        body = _body().decode()
        script.write(f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n")
    try:
        runs = []
        for i, (host, port, stream) in enumerate(targets):
            share = connections // len(targets) + (1 if i < connections % len(targets) else 0)
            url = f"http://{host}:{port}/api/streams/races/{stream}/data?secret={SECRET}"
            command = ["wrk", "-t1", f"-c{share}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script.name, url]
            runs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        outputs = [run.communicate(timeout=seconds + 60)[0] for run in runs]
    finally:
        os.unlink(script.name)
    ok = failed = 0
    rate = 0.0
    p50: list[float] = []
    p99: list[float] = []
    for output in outputs:
        requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
        not_ok = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in errors.groups()) if errors else 0)
        ok += requests - not_ok
        failed += not_ok
        rate += float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))  # type: ignore[union-attr]
        p50.append(_wrk_milliseconds(re.search(r"50%\s+(\S+)", output).group(1)))  # type: ignore[union-attr]
        p99.append(_wrk_milliseconds(re.search(r"99%\s+(\S+)", output).group(1)))  # type: ignore[union-attr]
    return {
        "acknowledged": ok,
        "failed": failed,
        "acknowledged_per_s": round(rate * ok / max(ok + failed, 1)),
        "p50_ms": round(max(p50), 2),  # the slowest stream's
        "p99_ms": round(max(p99), 2),
    }


async def _run(nodes: list[Server], args: argparse.Namespace) -> dict[str, Any]:
    clients = [
        httpx.AsyncClient(base_url=f"http://{n.host}:{n.port}", headers={"X-API-Key": KEY}, timeout=600) for n in nodes
    ]
    try:
        # Stream i is opened on node i % nodes, which holds it; its posts go there, as a
        # load balancer that routes by stream would send them.
        sessions = []
        targets = []
        for i in range(args.streams):
            node = i % len(nodes)
            stream = f"{STREAM}-{i}"
            opened = await clients[node].post("/api/races/sessions", json={"stream": stream})
            assert opened.status_code in (200, 201), opened.text
            sessions.append((node, opened.json()["id"]))
            targets.append((nodes[node].host, nodes[node].port, stream))
        if args.load == "wrk":
            ingest = await asyncio.to_thread(_wrk_load, targets, args.connections, args.seconds)
        else:
            ingest = await _python_load(targets, args.connections, args.seconds)
        ingest = {"load": args.load, "connections": args.connections, "streams": args.streams, **ingest}
        before = [(await clients[n].get(f"/api/races/sessions/{sid}")).json() for n, sid in sessions]
        started = time.perf_counter()
        closed = await asyncio.gather(*(clients[n].post(f"/api/races/sessions/{sid}/close") for n, sid in sessions))
        flush_seconds = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()
    after = [c.json() for c in closed]
    ingest["data_points"] = sum(b["data_points"] for b in before)  # durable, answered or not when the load stopped
    raw_mb = sum(b["bytes"] for b in before) / 1e6
    return {
        "ingest": ingest,
        "flush": {
            "points": sum(a["data_points"] for a in after),
            "jsonl_mb": round(raw_mb, 2),
            "archives": sum(len(a["archived_keys"]) for a in after),
            "seconds": round(flush_seconds, 3),
            "mb_per_s": round(raw_mb / flush_seconds, 1),
            "states": sorted({a["state"] for a in after}),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=64, help="concurrent posters, over all streams")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to post")
    parser.add_argument("--no-fsync", action="store_true", help="acknowledge after write(), without fdatasync")
    parser.add_argument(
        "--baseline", action="store_true", help="serve bench.races_baseline (no durability, no framework) instead"
    )
    parser.add_argument("--nodes", type=int, default=1, help="single-process nodes, each holding its own streams")
    parser.add_argument(
        "--streams", type=int, default=None, help="race sessions, spread over the nodes (default: one per node)"
    )
    parser.add_argument(
        "--load",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator: wrk (when installed) or this process's posters",
    )
    parser.add_argument(
        "--database-url", help="shared by the nodes (default: one SQLite file in the benchmark's folder)"
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes per node (needs --broker)")
    parser.add_argument("--broker", default="memory://", help="SLUICEGATE_BROKER_URL (redis://... for --workers 2)")
    args = parser.parse_args()
    args.streams = args.streams or args.nodes
    if args.workers > 1 and args.broker.startswith("memory"):
        parser.error("--workers 2 needs a shared broker: --broker redis://... or nats://...")

    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-", dir=os.environ.get("BENCH_DIR")) as folder:
        data_dir = Path(folder)
        env = {
            "SLUICEGATE_API_KEYS": f"{KEY}:admin",
            "SLUICEGATE_AX_PARSER_SECRET": SECRET,
            "SLUICEGATE_RACE_IDLE_SECONDS": "3600",
            "SLUICEGATE_RACE_CLOSE_WAIT_SECONDS": "600",
            "SLUICEGATE_RACE_FSYNC": "false" if args.no_fsync else "true",
            # Shared by the nodes: the database says which node holds a stream; archives in one store.
            "SLUICEGATE_DATABASE_URL": args.database_url or f"sqlite+aiosqlite:///{data_dir / 'shared.db'}",
            "SLUICEGATE_OBJECT_STORE_URL": f"file://{data_dir / 'objects'}",
            "SLUICEGATE_WORKERS": str(args.workers),
            "SLUICEGATE_BROKER_URL": args.broker,
        }
        app = "bench.races_baseline:create_app" if args.baseline else None
        nodes: list[Server] = []
        try:
            for i in range(args.nodes):
                port = free_port()
                node_env = {**env, "SLUICEGATE_NODE_URL": f"http://127.0.0.1:{port}"}
                nodes.append(start_server(app, data_dir / f"node{i}", node_env, args=("--port", str(port))))
            if args.workers > 1:  # the workers' start-up, after the supervisor's
                time.sleep(5)
            if len(cpus) >= 2 and args.nodes == 1 and args.workers == 1:
                os.sched_setaffinity(nodes[0].process.pid, {cpus[0]})
                os.sched_setaffinity(0, {cpus[1]})  # the load (wrk inherits it)
            elif len(cpus) >= args.nodes and args.workers == 1:
                for node, cpu in zip(nodes, cpus, strict=False):
                    os.sched_setaffinity(node.process.pid, {cpu})
            result = uvloop.run(_run(nodes, args))
        finally:
            for node in nodes:
                node.stop()
    print(
        orjson.dumps(
            {
                "bench": "races",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "server_pinned": "one CPU per node" if len(cpus) >= args.nodes and args.workers == 1 else "no",
                "nodes": args.nodes,
                "workers_per_node": args.workers,
                "server": "bare ASGI baseline" if args.baseline else "sluicegate",
                "fsync": not args.no_fsync and not args.baseline,
                **result,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
