"""SSE fan-out benchmark: one publisher, N SSE subscribers, through a real channel.

Starts ``sluicegate serve --app bench.fanout_app:create_app`` pinned to CPU 0. From
this process, pinned to CPU 1, it opens N raw asyncio SSE connections and one
WebSocket publisher. The publisher sends JSON messages that carry their send time and
keeps at most ``--window`` messages ahead of the slowest subscriber (so nobody is cut
off as a slow consumer). It measures deliveries per second and publish-to-receive
latency (p50/p99, sampled on the oldest message of every socket read). Prints one
JSON line.

    .venv/bin/python bench/sse_fanout.py                   # channel and baselines, N = 100 and 1000
    .venv/bin/python bench/sse_fanout.py --impl channel --subscribers 1000
    .venv/bin/python bench/sse_fanout.py --broker redis://127.0.0.1:6379/0 --nodes 2

With ``--broker`` the servers use that broker (in a namespace of the run's own, removed
afterwards) and only the channel implementation is measured; with ``--nodes 2`` two
servers share it, the subscribers are split between them and the publisher writes to
the first (then nothing is pinned: two servers and the client share two CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.brokers import drop  # noqa: E402 -- removes the run's broker namespace
from tests.server import start_server  # noqa: E402 -- the same launcher the tests use

IMPLS = ("channel", "starlette", "sse-starlette", "fastapi-sse")
DEFAULT_IMPLS = ("channel", "starlette", "sse-starlette")
KEY = "sk-bench"
_T = re.compile(rb'"t":(\d+)')


def _paths(impl: str) -> tuple[str, str]:
    if impl == "channel":
        return "/api/channels/bench/events", "/api/channels/bench/ws"
    return f"/bench/{impl}", f"/bench/{impl}/publish"


class Subscriber(asyncio.Protocol):
    """One SSE connection, as a bare protocol: no coroutine switch per read, so that one
    client process can follow a server at hundreds of thousands of deliveries per second."""

    def __init__(self, path: str, host: str, want: int) -> None:
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nX-API-Key: {KEY}\r\n\r\n"
        self.want = want
        self.deliveries = 0
        self.samples: list[float] = []
        self.first = 0.0
        self.last = 0.0
        self._tail = b""
        self._head = True
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport
        transport.write(self.request.encode())

    def data_received(self, chunk: bytes) -> None:
        now = time.time_ns()
        if self._head:
            head, sep, chunk = chunk.partition(b"\r\n\r\n")
            assert sep and b" 200 " in head.split(b"\r\n", 1)[0], head
            self._head = False
        # Every message holds '"seq":' once; a 5-byte tail cannot hold a whole one, so
        # counting over tail + chunk counts each exactly once, however the bytes are split.
        joined = self._tail + chunk
        n = joined.count(b'"seq":')
        self._tail = joined[-5:]
        if n:
            if not self.deliveries:
                self.first = time.perf_counter()
            self.deliveries += n
            self.last = time.perf_counter()
            match = _T.search(chunk)
            if match:
                self.samples.append((now - int(match.group(1))) / 1e6)
            if self.deliveries >= self.want and not self.done.done():
                self.done.set_result(None)
                assert self.transport is not None
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _publish(
    host: str, port: int, path: str, subs: list[Subscriber], messages: int, size: int, window: int, rate: float | None
) -> None:
    """Publish ``messages``: as fast as the slowest subscriber allows (``window``), or at ``rate`` per second."""
    pad = "x" * max(0, size - 60)
    async with connect(f"ws://{host}:{port}{path}", additional_headers={"X-API-Key": KEY}, max_queue=None) as ws:

        async def discard() -> None:  # acks and echoes of the channel WebSocket
            async for _ in ws:
                pass

        draining = asyncio.create_task(discard())
        slowest = 0
        started = time.perf_counter()
        for seq in range(messages):
            if rate is not None:
                await asyncio.sleep(max(0.0, started + seq / rate - time.perf_counter()))
            while seq - slowest >= window:
                await asyncio.sleep(0.0002)
                slowest = min(s.deliveries for s in subs)
            await ws.send(orjson.dumps({"t": time.time_ns(), "seq": seq, "pad": pad}).decode())
        # Stay connected until every subscriber has everything: messages the server has
        # received but not yet published (not acknowledged) go with the connection.
        await asyncio.wait([s.done for s in subs], timeout=300)
        draining.cancel()


async def _subscribers(nodes: list[tuple[str, int]], impl: str) -> int:
    total = 0
    for host, port in nodes:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=60) as client:
            total += (await client.get("/bench/subscribers", params={"impl": impl})).json()["subscribers"]
    return total


async def measure(
    nodes: list[tuple[str, int]], impl: str, n: int, messages: int, size: int, window: int, rate: float | None = None
) -> dict[str, object]:
    events_path, publish_path = _paths(impl)
    loop = asyncio.get_running_loop()
    subs = [Subscriber(events_path, nodes[i % len(nodes)][0], messages) for i in range(n)]
    for i, sub in enumerate(subs):
        host, port = nodes[i % len(nodes)]
        await loop.create_connection(lambda sub=sub: sub, host, port)  # type: ignore[misc]
    while await _subscribers(nodes, impl) < n:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    host, port = nodes[0]
    publisher = asyncio.create_task(_publish(host, port, publish_path, subs, messages, size, window, rate))
    await asyncio.wait([s.done for s in subs], timeout=300)
    publisher.cancel()
    for sub in subs:
        if sub.transport is not None:
            sub.transport.close()
    deliveries = sum(s.deliveries for s in subs)
    seconds = max(s.last for s in subs) - min(s.first for s in subs if s.first)
    samples = sorted(x for s in subs for x in s.samples)
    return {
        "impl": impl,
        "subscribers": n,
        "mode": "max" if rate is None else f"{round(rate * n)} deliveries/s offered",
        "messages": messages,
        "deliveries": deliveries,
        "lost": n * messages - deliveries,
        "deliveries_per_s": round(deliveries / seconds) if seconds > 0 else None,
        "p50_ms": round(statistics.median(samples), 2) if samples else None,
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 2) if samples else None,
    }


def _namespaced(url: str) -> str:
    """The broker URL in a namespace of this run's own."""
    tag = os.urandom(4).hex()
    if url.startswith("redis") and "prefix=" not in url:
        return f"{url}{'&' if '?' in url else '?'}prefix=bench-{tag}"
    if url.startswith("nats") and "stream=" not in url:
        return f"{url}{'&' if '?' in url else '?'}stream=BENCH_{tag.upper()}"
    return url


def _run(data_dir: Path, args: argparse.Namespace, cpus: list[int]) -> list[dict[str, object]]:
    env = {"SLUICEGATE_API_KEYS": f"{KEY}:user", "SLUICEGATE_LOG_LEVEL": "info", "SLUICEGATE_BROKER_URL": args.broker}
    servers = [start_server("bench.fanout_app:create_app", data_dir / f"node{i}", env) for i in range(args.nodes)]
    try:
        if len(cpus) >= 2 and len(servers) == 1:
            os.sched_setaffinity(servers[0].process.pid, {cpus[0]})
            os.sched_setaffinity(0, {cpus[1]})
        nodes = [(server.host, server.port) for server in servers]
        results = []
        for impl in args.impl.split(","):
            for n in (int(x) for x in args.subscribers.split(",")):
                messages = max(1, args.deliveries // n)
                results.append(uvloop.run(measure(nodes, impl, n, messages, args.size, args.window)))
                if args.latency_rate:  # latency at a fixed, moderate load
                    rate = args.latency_rate / n
                    count = max(50, int(rate * args.latency_seconds))
                    results.append(uvloop.run(measure(nodes, impl, n, count, args.size, 1000, rate)))
        return results
    finally:
        for server in servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default=",".join(DEFAULT_IMPLS), help="comma-separated: " + ", ".join(IMPLS))
    parser.add_argument("--subscribers", default="100,1000", help="comma-separated subscriber counts")
    parser.add_argument("--deliveries", type=int, default=500_000, help="target deliveries per measurement")
    parser.add_argument("--size", type=int, default=100, help="approximate message size in bytes")
    parser.add_argument("--window", type=int, default=20, help="messages the publisher may run ahead of the slowest")
    parser.add_argument(
        "--latency-rate", type=float, default=50_000, help="deliveries/s offered in the latency run (0 skips it)"
    )
    parser.add_argument("--latency-seconds", type=float, default=3.0, help="length of the latency run")
    parser.add_argument("--broker", default="memory://", help="SLUICEGATE_BROKER_URL of the servers")
    parser.add_argument("--nodes", type=int, default=1, help="servers sharing the broker (2 needs a shared broker)")
    args = parser.parse_args()
    if args.nodes > 1 and args.broker.startswith("memory"):
        parser.error("--nodes 2 needs a shared broker: --broker redis://... or nats://...")
    if not args.broker.startswith("memory"):
        args.broker = _namespaced(args.broker)
        if args.impl == ",".join(DEFAULT_IMPLS):
            args.impl = "channel"  # the baselines do not use a broker

    cpus = sorted(os.sched_getaffinity(0))
    try:
        with tempfile.TemporaryDirectory(prefix="sluicegate-bench-") as data_dir:
            results = _run(Path(data_dir), args, cpus)
    finally:
        asyncio.run(drop(args.broker))
    print(
        orjson.dumps(
            {
                "bench": "sse_fanout",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "server_pinned_to_one_cpu": len(cpus) >= 2 and args.nodes == 1,
                "broker": args.broker.partition("?")[0],
                "nodes": args.nodes,
                "message_bytes": args.size,
                "window": args.window,
                "results": results,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
