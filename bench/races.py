"""Race collection benchmark: durable acknowledged points per second, then flush throughput.

Starts ``--nodes`` single-process ``sluicegate serve`` nodes (default 1) that share one
database (an SQLite file, ``--database-url``, or ``--postgres`` for a fresh PostgreSQL
database of the run's own), one file object store, the broker (``--broker``) and the
session log (``--log``, ``SLUICEGATE_LOG_URL``; unset: the local spool with the memory
broker, the broker's own engine with a Redis or NATS broker). Several nodes need a
shared log: any node takes any stream's points, there is no holder. Each node is pinned
to a CPU of its own (one node: the server on CPU 0, the load on CPU 1); the shared
servers (Redis, NATS, PostgreSQL) float.

It opens ``--streams`` race sessions (default one per node, opened round-robin) and
posts one ~100-byte telemetry point at a time to ``POST /api/streams/races/{stream}/data``
for ``--seconds`` over ``--connections`` keep-alive HTTP/1.1 connections. By default
every stream's points are spread over every node (each (stream, node) pair gets its
share of the connections); ``--route-by-stream`` sends stream i to node i % nodes only,
as a load balancer routing by stream would. The load is ``wrk`` when it is installed
(one process per (stream, node) pair), else this process's raw-socket posters
(``--load python``). Every 200 counts: the point was in the session's log first
(on the spool: written and fdatasync'ed, unless ``--no-fsync``; on NATS: acknowledged
by JetStream; on Redis: in Redis's memory). Then it closes the sessions (the
processors compress what the logs hold with zstd and write the archives) and times
that. ``--baseline`` serves ``bench.races_baseline`` instead: the same body parsed and
answered by a bare ASGI app, no framework and no durability (the floor).

Every run reports the CPU cores each process used during the load (the nodes with
their children, Redis, NATS, PostgreSQL, the load, and ``others``: the rest of the
machine, high when the run was disturbed), every failed answer (by status and body with
``--load python``; by kind with wrk), and how each node stopped, with its warnings.
``--profile`` samples each node with py-spy during the load (the thread holding the
GIL only) and reports the share of samples inside the session-log engine, its client
library and elsewhere; sampling slows the server, so a profiled run's throughput is not
a figure to quote. ``--timed`` serves ``bench.timed_app``, which counts and times the
log's calls. Redis keys, JetStream streams and a ``--postgres`` database the run made
are removed at the end. Prints one JSON line.

    .venv/bin/python bench/races.py
    .venv/bin/python bench/races.py --baseline
    .venv/bin/python bench/races.py --broker nats://127.0.0.1:4222 --nodes 2 --postgres postgresql://postgres@127.0.0.1:5432
    .venv/bin/python bench/races.py --broker redis://127.0.0.1:6379/0 --nodes 2 --profile
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
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cluster import Profiler, backends, cpu_snapshot, cpu_spent, start_nodes, stop_nodes  # noqa: E402
from bench.timed_app import read_timings  # noqa: E402

if TYPE_CHECKING:
    from tests.server import Server

KEY, SECRET, STREAM = "sk-bench-admin", "bench-secret", "bench-driver"


class Poster(asyncio.Protocol):
    """One keep-alive connection posting a point, waiting for its answer, and posting again."""

    def __init__(self, request: bytes, deadline: float, done: asyncio.Future[None]) -> None:
        self.request = request
        self.deadline = deadline
        self.done = done
        self.ok = 0
        self.failed = 0
        self.failures: dict[str, int] = {}  # answers other than 200: "<status> <body>", counted
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
            body = self._buffer[head_end + 4 : end]
            self._buffer = self._buffer[end:]
            now = time.perf_counter()
            if head.startswith(b"HTTP/1.1 200"):
                self.ok += 1
                self.latencies.append(now - self._sent)
            else:
                self.failed += 1
                what = (head[9:12] + b" " + body[:150]).decode(errors="replace")
                self.failures[what] = self.failures.get(what, 0) + 1
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
    """``connections`` posters from this process, spread round-robin over the targets."""
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
        **({"failures": merge_counts([p.failures for p in posters])} if any(p.failures for p in posters) else {}),
        "acknowledged_per_s": round(ok / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2) if latencies else None,
    }


def merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    """Counts by key, summed over several counters."""
    merged: dict[str, int] = {}
    for one in counts:
        for key, count in one.items():
            merged[key] = merged.get(key, 0) + count
    return merged


def _wrk_milliseconds(value: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    number = re.match(r"([0-9.]+)([a-z]+)", value)
    assert number is not None, value
    return float(number.group(1)) * units[number.group(2)]


def _wrk_load(targets: list[tuple[str, int, str]], connections: int, seconds: float) -> dict[str, Any]:
    """One ``wrk`` process per target (a C load generator: the Python posters cost the
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
    kinds: dict[str, int] = {}
    rate = 0.0
    p50: list[float] = []
    p99: list[float] = []
    for output in outputs:
        requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
        not_ok = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in errors.groups()) if errors else 0)
        counts = [("non-2xx answers", bad.group(1) if bad else "0")]
        socket_kinds = ("connect", "read", "write", "timeout (2 s)")
        counts += list(zip(socket_kinds, errors.groups() if errors else (), strict=False))
        for kind, count in counts:
            if int(count):
                kinds[kind] = kinds.get(kind, 0) + int(count)
        ok += requests - not_ok
        failed += not_ok
        rate += float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))  # type: ignore[union-attr]
        p50.append(_wrk_milliseconds(re.search(r"^\s*50%\s+(\S+)", output, re.MULTILINE).group(1)))  # type: ignore[union-attr]
        p99.append(_wrk_milliseconds(re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE).group(1)))  # type: ignore[union-attr]
    return {
        "acknowledged": ok,
        "failed": failed,
        **({"failures": kinds} if kinds else {}),
        "acknowledged_per_s": round(rate * ok / max(ok + failed, 1)),
        "p50_ms": round(max(p50), 2),  # the slowest target's
        "p99_ms": round(max(p99), 2),
    }


def _targets(nodes: list[Server], streams: list[str], *, route_by_stream: bool) -> list[tuple[str, int, str]]:
    """(host, port, stream) of every connection group: each stream on every node, or
    stream i on node i % nodes only."""
    if route_by_stream:
        return [(nodes[i % len(nodes)].host, nodes[i % len(nodes)].port, s) for i, s in enumerate(streams)]
    return [(node.host, node.port, stream) for stream in streams for node in nodes]


async def _run(nodes: list[Server], args: argparse.Namespace) -> dict[str, Any]:
    clients = [
        httpx.AsyncClient(base_url=f"http://{n.host}:{n.port}", headers={"X-API-Key": KEY}, timeout=600) for n in nodes
    ]
    try:
        sessions = []  # (node the session was opened on, its id)
        streams = []
        for i in range(args.streams):
            node = i % len(nodes)
            stream = f"{STREAM}-{i}"
            opened = await clients[node].post("/api/races/sessions", json={"stream": stream})
            assert opened.status_code in (200, 201), opened.text
            sessions.append((node, opened.json()["id"]))
            streams.append(stream)
        targets = _targets(nodes, streams, route_by_stream=args.route_by_stream)
        profiler = None
        if args.profile:
            pids = [n.process.pid for n in nodes]
            profiler = Profiler(pids, delay=1.0, seconds=args.seconds - 2, keep=args.profile_out)
            profiler.start_later()
        cpu_before, load_started = cpu_snapshot(nodes), time.perf_counter()
        if args.load == "wrk":
            ingest = await asyncio.to_thread(_wrk_load, targets, args.connections, args.seconds)
        else:
            ingest = await _python_load(targets, args.connections, args.seconds)
        cpu = cpu_spent(cpu_before, cpu_snapshot(nodes), time.perf_counter() - load_started)
        ingest = {
            "load": args.load,
            "connections": args.connections,
            "streams": args.streams,
            "routing": "stream i to node i % nodes" if args.route_by_stream else "every stream over every node",
            **ingest,
        }
        before = [(await clients[n].get(f"/api/races/sessions/{sid}")).json() for n, sid in sessions]
        started = time.perf_counter()
        closed = await asyncio.gather(*(clients[n].post(f"/api/races/sessions/{sid}/close") for n, sid in sessions))
        flush_seconds = time.perf_counter() - started
        profile = await asyncio.to_thread(profiler.results) if profiler is not None else None
    finally:
        for client in clients:
            await client.aclose()
    after = [c.json() for c in closed]
    ingest["data_points"] = sum(b["data_points"] for b in before)  # durable, answered or not when the load stopped
    raw_mb = sum(b["bytes"] for b in before) / 1e6
    result: dict[str, Any] = {
        "ingest": ingest,
        "cpu_cores_during_load": cpu,
        "flush": {
            "points": sum(a["data_points"] for a in after),
            "jsonl_mb": round(raw_mb, 2),
            "archives": sum(len(a["archived_keys"]) for a in after),
            "seconds": round(flush_seconds, 3),
            "mb_per_s": round(raw_mb / flush_seconds, 1),
            "states": sorted({a["state"] for a in after}),
        },
    }
    if profile is not None:
        result["profile"] = profile
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=64, help="concurrent posters, over all streams")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to post")
    parser.add_argument("--no-fsync", action="store_true", help="on the spool, acknowledge after write(), no fdatasync")
    parser.add_argument(
        "--baseline", action="store_true", help="serve bench.races_baseline (no durability, no framework) instead"
    )
    parser.add_argument("--nodes", type=int, default=1, help="single-process nodes sharing the database and the log")
    parser.add_argument(
        "--streams",
        type=int,
        default=None,
        help="race sessions, opened round-robin on the nodes (default: one per node)",
    )
    parser.add_argument(
        "--route-by-stream",
        action="store_true",
        help="post stream i to node i %% nodes only (default: every stream's points spread over every node)",
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
    parser.add_argument(
        "--postgres",
        metavar="SERVER_URL",
        help="a fresh database of the run's own on this PostgreSQL server (postgresql://postgres@127.0.0.1:5432), "
        "dropped at the end",
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes per node (needs a shared log)")
    parser.add_argument(
        "--broker", default="memory://", help="SLUICEGATE_BROKER_URL: memory://, redis://... or nats://..."
    )
    parser.add_argument(
        "--log",
        default=os.environ.get("SLUICEGATE_LOG_URL"),
        help="SLUICEGATE_LOG_URL: spool://, redis://... or nats://... (default: the spool with the memory broker, "
        "the broker's engine with a shared one)",
    )
    parser.add_argument(
        "--timed",
        action="store_true",
        help="serve bench.timed_app: count and time the log's and the archiver's calls on each node",
    )
    parser.add_argument("--profile-out", type=Path, help="with --profile: keep py-spy's raw output in this folder")
    parser.add_argument("--profile", action="store_true", help="sample the nodes with py-spy during the load")
    args = parser.parse_args()
    args.streams = args.streams or args.nodes

    cpus = sorted(os.sched_getaffinity(0))
    with backends(args.broker, args.log, args.database_url, args.postgres) as chosen:
        if not args.baseline and (args.nodes > 1 or args.workers > 1) and not chosen.log_is_shared:
            parser.error("several nodes or workers need a shared log: --broker or --log redis://... or nats://...")
        if not args.baseline and args.nodes > 1 and args.broker.startswith("memory"):
            parser.error("several nodes need a shared broker (the processors' notices): --broker redis:// or nats://")
        with tempfile.TemporaryDirectory(prefix="sluicegate-bench-", dir=os.environ.get("BENCH_DIR")) as folder:
            data_dir = Path(folder)
            env = {
                "SLUICEGATE_API_KEYS": f"{KEY}:admin",
                "SLUICEGATE_AX_PARSER_SECRET": SECRET,
                "SLUICEGATE_RACE_IDLE_SECONDS": "3600",
                "SLUICEGATE_RACE_CLOSE_WAIT_SECONDS": "600",
                "SLUICEGATE_RACE_FSYNC": "false" if args.no_fsync else "true",
                "SLUICEGATE_WORKERS": str(args.workers),
                **chosen.env(data_dir),
            }
            app = "bench.races_baseline:create_app" if args.baseline else None
            if args.timed and not args.baseline:
                app = "bench.timed_app:create_app"
            nodes = start_nodes(args.nodes, app, data_dir, env)
            timings = None
            try:
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
                stopped = stop_nodes(nodes)
                if args.timed:
                    timings = {f"node{i}": read_timings(data_dir / f"node{i}") for i in range(args.nodes)}
        described = chosen.describe()
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
                **({} if args.baseline else described),
                "profiled": args.profile,
                "nodes_stopped": stopped,
                **({"timings": timings} if timings is not None else {}),
                **result,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
