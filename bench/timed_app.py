"""Sluicegate's own app with stopwatches on the calls a benchmark wants to see the cost
of (``sluicegate serve --app bench.timed_app:create_app``; ``--timed`` in
bench/races.py and bench/ingest.py).

Each timed call (the session log's appends, trims and state changes, the ingest
archiver's batch rows and writes, the ingest processor's trims) is counted and its wall
time summed. Wall time is not CPU time: an append that waits for an ``fdatasync`` or a
JetStream acknowledgement costs the event loop little while it waits. At shutdown the
figures are written to ``<data dir>/timings.json``, where the benchmark reads them,
with the exceptions the timed calls raised, counted by message.

The wrappers are installed on the classes when the app is built; nothing of the product
changes otherwise, except for one experiment: with ``BENCH_SKIP_TRIM=1`` the session
log's ``trim`` returns at once (records stay in the log), to see what trimming costs
the appends.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import orjson

from sluicegate.app import create_app as create_sluicegate_app

_TOTALS: dict[str, list[float]] = {}  # name -> [calls, seconds, most seconds]
_ERRORS: dict[str, int] = {}  # "<call>: <exception type>: <message>" -> how many


def _timed(name: str, method: Any) -> Any:
    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except Exception as exc:
            what = f"{name}: {type(exc).__name__}: {str(exc)[:120]}"
            _ERRORS[what] = _ERRORS.get(what, 0) + 1
            raise
        finally:
            spent = time.perf_counter() - started
            totals = _TOTALS.setdefault(name, [0, 0.0, 0.0])
            totals[0] += 1
            totals[1] += spent
            totals[2] = max(totals[2], spent)

    return wrapper


def _install() -> None:
    from sluicegate.engines.log.nats import NatsLog
    from sluicegate.engines.log.redis import RedisLog
    from sluicegate.engines.log.spool import SpoolLog
    from sluicegate.services.ingest.archiver import Archiver
    from sluicegate.services.ingest.processor import IngestProcessor

    for cls in (SpoolLog, NatsLog, RedisLog):
        if os.environ.get("BENCH_SKIP_TRIM") == "1":

            async def skipped(self: Any, log: str, position: str) -> None:
                return None

            cls.trim = skipped  # type: ignore[method-assign]
        for method in ("append", "trim", "set_state", "head", "create", "delete"):
            setattr(cls, method, _timed(f"log.{method}", getattr(cls, method)))
    for method in ("cut", "write", "mark"):
        setattr(Archiver, method, _timed(f"ingest archiver.{method}", getattr(Archiver, method)))
    for method in ("_trim", "_start", "_take", "_settled"):
        setattr(IngestProcessor, method, _timed(f"ingest processor.{method}", getattr(IngestProcessor, method)))


def _write() -> None:
    folder = Path(os.environ.get("SLUICEGATE_DATA_DIR", "."))
    report = {
        name: {"calls": int(calls), "seconds": round(seconds, 3), "mean_ms": round(seconds / calls * 1000, 3)}
        | {"max_ms": round(most * 1000, 1)}
        for name, (calls, seconds, most) in sorted(_TOTALS.items())
        if calls
    }
    if _ERRORS:
        report["errors raised"] = dict(sorted(_ERRORS.items(), key=lambda item: -item[1])[:10])
    folder.mkdir(parents=True, exist_ok=True)  # (nothing else uses it with a shared log and database)
    (folder / "timings.json").write_bytes(orjson.dumps(report))


def create_app() -> Any:
    _install()
    app = create_sluicegate_app()

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)

        async def receiving() -> Any:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                _write()  # before the app's own shutdown (uvicorn ends by re-raising SIGTERM: no atexit)
            return message

        return await app(scope, receiving, send)

    return timed


def read_timings(data_dir: Path) -> dict[str, Any] | None:
    """What a node wrote at shutdown (``None`` if nothing)."""
    path = data_dir / "timings.json"
    return orjson.loads(path.read_bytes()) if path.exists() else None
