"""Ingestion benchmark: telemetry over HTTP at batch sizes 100, 1,000 and 10,000.

Starts ``--nodes`` ``sluicegate serve`` nodes (default 1; fsync on unless ``--no-fsync``;
the whole machine, their ingest workers included, unless ``--pin`` keeps one node to
CPU 0 and this process to CPU 1). The nodes share one database (an SQLite file,
``--database-url``, or ``--postgres`` for a fresh PostgreSQL database of the run's own),
one file object store, the broker (``--broker``) and the session log (``--log``,
``SLUICEGATE_LOG_URL``; unset: the local spool with the memory broker, the broker's own
engine with a Redis or NATS broker); several nodes need a shared log and broker.

From this process it starts one session per batch size (``batchSize`` equal to the
upload size, on the first node) and runs ``--connections`` keep-alive HTTP/1.1
connections, connection i to node i % nodes, each uploading ~105-byte telemetry records
(the second seed's shape) back to back for ``--seconds``: every node takes uploads for
the same session, as any node does (there is no holder). An upload counts when answered
200: its records were in the session's log (on the spool: written and fdatasync'ed;
on NATS: acknowledged by JetStream; on Redis: in Redis's memory). Then it ends the
session with ``waitForCompletion`` on the first node and times the processing that was
still queued (the session's processor runs on whichever node holds its lease). Each
size is shown beside the seed's table as the issue reads it (1,000, 8,333 and 50,000
records/s).

Each size reports the records acknowledged, received and stored (equal when nothing
was lost or doubled), the CPU cores each process used during the load (as in
bench/races.py), and failed uploads by status and body. ``--profile`` samples the nodes
(and their ingest workers) with py-spy during the load of each size (the threads
holding the GIL only) and reports the share of samples inside the session-log engine,
its client library and elsewhere; sampling slows the server, so a profiled run's
throughput is not a figure to quote. ``--timed`` serves ``bench.timed_app`` (the log's,
the archiver's and the processor's calls counted and timed). Redis keys, JetStream
streams and a ``--postgres`` database the run made are removed at the end. Prints one
JSON line.

    .venv/bin/python bench/ingest.py
    .venv/bin/python bench/ingest.py --sizes 10000 --connections 4 --seconds 10
    .venv/bin/python bench/ingest.py --sizes 10000 --broker nats://127.0.0.1:4222 --nodes 2 \\
        --postgres postgresql://postgres@127.0.0.1:5432
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
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cluster import Profiler, backends, cpu_snapshot, cpu_spent, start_nodes, stop_nodes  # noqa: E402
from bench.races import Poster, merge_counts  # noqa: E402 -- the same raw keep-alive client
from bench.timed_app import read_timings  # noqa: E402
from sluicegate.clock import SystemClock  # noqa: E402
from sluicegate.security.identity import TokenService  # noqa: E402

if TYPE_CHECKING:
    from tests.server import Server

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


async def _run_size(nodes: list[Server], token: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    first = nodes[0]
    async with httpx.AsyncClient(base_url=first.url, headers=headers, timeout=600) as client:
        started_session = await client.post(
            "/api/streaming/sessions/start",
            json={"sessionType": "telemetry", "batchSize": size, "maxBatchDelayMs": 200, "maxConcurrentBatches": 8},
        )
        assert started_session.status_code in (200, 201), (started_session.status_code, started_session.text)
        session = started_session.json()
        body = orjson.dumps({"records": _records(size)})
        loop = asyncio.get_running_loop()
        profiler = None
        if args.profile:
            pids = [n.process.pid for n in nodes]
            profiler = Profiler(pids, delay=1.0, seconds=args.seconds - 2, subprocesses=True, keep=args.profile_out)
            profiler.start_later()
        cpu_before = cpu_snapshot(nodes)
        deadline = time.perf_counter() + args.seconds
        posters = []
        started = time.perf_counter()
        for i in range(args.connections):
            node = nodes[i % len(nodes)]  # every node takes uploads for the session
            done: asyncio.Future[None] = loop.create_future()
            poster = Poster(_request(node.host, session["sessionId"], token, body), deadline, done)
            await loop.create_connection(lambda p=poster: p, node.host, node.port)  # type: ignore[misc]
            posters.append(poster)
        await asyncio.wait([p.done for p in posters], timeout=args.seconds + 120)
        elapsed = time.perf_counter() - started
        cpu = cpu_spent(cpu_before, cpu_snapshot(nodes), elapsed)
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
        profile = await asyncio.to_thread(profiler.results) if profiler is not None else None
    records = uploads * size
    total_seconds = elapsed + drain
    result = {
        "batch_size": size,
        "connections": args.connections,
        "uploads": uploads,
        "uploads_by_node": [sum(p.ok for p in posters[i :: len(nodes)]) for i in range(len(nodes))],
        "failed": sum(p.failed for p in posters),
        **({"failures": merge_counts([p.failures for p in posters])} if any(p.failures for p in posters) else {}),
        "acknowledged_records_per_s": round(records / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2) if latencies else None,
        "processed_records_per_s": round(records / total_seconds),
        "drain_seconds": round(drain, 2),
        "final_status": ended.get("status"),
        # Acknowledged, received by the session and stored: equal when nothing was lost or doubled.
        "records_acknowledged": records,
        "records_received": ended.get("finalStatistics", {}).get("totalRecordsReceived"),
        "records_stored": ended.get("finalStatistics", {}).get("totalAtomsCreated"),
        "seed_table_records_per_s": SEED_TABLE.get(size),
        "cpu_cores_during_load": cpu,
    }
    if profile is not None:
        result["profile"] = profile
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated records per upload")
    parser.add_argument("--connections", type=int, default=4, help="concurrent uploaders, over all nodes")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to upload, per size")
    parser.add_argument("--no-fsync", action="store_true", help="on the spool, acknowledge after write(), no fdatasync")
    parser.add_argument(
        "--pin", action="store_true", help="one node: pin it (and its workers) to CPU 0 and this process to CPU 1"
    )
    parser.add_argument("--workers", type=int, default=None, help="SLUICEGATE_INGEST_WORKERS (default: one per CPU)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes sharing the database, the broker and the log")
    parser.add_argument(
        "--database-url", help="shared by the nodes (default: one SQLite file in the benchmark's folder)"
    )
    parser.add_argument(
        "--postgres",
        metavar="SERVER_URL",
        help="a fresh database of the run's own on this PostgreSQL server (postgresql://postgres@127.0.0.1:5432), "
        "dropped at the end",
    )
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
    parser.add_argument("--profile", action="store_true", help="sample the nodes with py-spy during each load")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    token, _ = TokenService(SECRET, clock=SystemClock()).issue(tenant=1, subject="bench")
    results = []
    with backends(args.broker, args.log, args.database_url, args.postgres) as chosen:
        if args.nodes > 1 and not chosen.log_is_shared:
            parser.error("several nodes need a shared log: --broker or --log redis://... or nats://...")
        if args.nodes > 1 and args.broker.startswith("memory"):
            parser.error("several nodes need a shared broker (the session's events): --broker redis:// or nats://")
        with tempfile.TemporaryDirectory(prefix="sluicegate-bench-", dir=os.environ.get("BENCH_DIR")) as folder:
            data_dir = Path(folder)
            env = {
                "SLUICEGATE_JWT_SECRET": SECRET,  # one secret: a token is good on every node
                "SLUICEGATE_RATE_LIMIT_TENANT": "100000000/minute",
                "SLUICEGATE_INGEST_FSYNC": "false" if args.no_fsync else "true",
                "SLUICEGATE_INGEST_MAX_QUEUED_RECORDS": "50000000",
                **chosen.env(data_dir),
            }
            if args.workers is not None:
                env["SLUICEGATE_INGEST_WORKERS"] = str(args.workers)
            app = "bench.timed_app:create_app" if args.timed else None
            nodes = start_nodes(args.nodes, app, data_dir, env)
            timings = None
            try:
                if args.pin and len(cpus) >= 2 and args.nodes == 1:
                    os.sched_setaffinity(nodes[0].process.pid, {cpus[0]})
                    os.sched_setaffinity(0, {cpus[1]})
                for size in (int(s) for s in args.sizes.split(",")):
                    results.append(uvloop.run(_run_size(nodes, token, size, args)))
            finally:
                stopped = stop_nodes(nodes)
                if args.timed:
                    timings = {f"node{i}": read_timings(data_dir / f"node{i}") for i in range(args.nodes)}
        described = chosen.describe()
    print(
        orjson.dumps(
            {
                "bench": "ingest",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "server_pinned_to_one_cpu": args.pin and len(cpus) >= 2 and args.nodes == 1,
                "nodes": args.nodes,
                "uploads": "connection i to node i % nodes: every node takes uploads for the same session",
                "ingest_workers": args.workers if args.workers is not None else os.cpu_count(),
                "fsync": not args.no_fsync,
                **described,
                "profiled": args.profile,
                "nodes_stopped": stopped,
                **({"timings": timings} if timings is not None else {}),
                "record_bytes": len(orjson.dumps(_records(1)[0])),
                "results": results,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
