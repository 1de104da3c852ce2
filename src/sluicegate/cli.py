"""The ``sluicegate`` command.

.. code-block:: text

    sluicegate --version
    sluicegate serve [--host HOST] [--port PORT] [--workers N] [--app MODULE:FACTORY]
    sluicegate token create --tenant N [--scope SCOPE ...] [--ttl 24h] [--subject NAME]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

import sluicegate
from sluicegate.errors import ConfigurationError
from sluicegate.observability.logs import logging_config
from sluicegate.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

DEFAULT_APP = "sluicegate.cli:create_app_or_exit"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluicegate", description="Sluicegate, a real-time streaming gateway.")
    parser.add_argument("--version", action="version", version=f"sluicegate {sluicegate.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server (settings from SLUICEGATE_* and .env)")
    serve.add_argument("--host", help="address to bind (SLUICEGATE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind, 0 for any free one (SLUICEGATE_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="server processes (SLUICEGATE_WORKERS, default 1)")
    serve.add_argument(
        "--app",
        default=DEFAULT_APP,
        help=f"import string of an app factory taking no arguments (default {DEFAULT_APP}); "
        "the current directory is importable",
    )

    token = commands.add_parser("token", help="bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = token_commands.add_parser("create", help="print a new bearer token (signed with the server's secret)")
    create.add_argument("--tenant", type=int, required=True, help="the tenant the token acts for")
    create.add_argument("--scope", action="append", default=[], help="a scope (repeatable); 'admin' makes an admin")
    create.add_argument("--ttl", type=_duration, default=timedelta(hours=24), help="lifetime: 3600, 90s, 15m, 24h, 7d")
    create.add_argument("--subject", default="cli", help="the token's subject (sub), default 'cli'")
    return parser


_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 3600, 90s, 15m, 24h or 7d")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _token_create(args: argparse.Namespace) -> int:
    from sluicegate.clock import SystemClock
    from sluicegate.security.identity import TokenService, load_or_create_secret

    settings = Settings()
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else load_or_create_secret(settings.data_dir)
    token, _ = TokenService(secret, clock=SystemClock()).issue(
        tenant=args.tenant, subject=args.subject, scopes=args.scope, ttl=args.ttl
    )
    print(token)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sluicegate.engines.log import default_log_url

    settings = Settings()
    sys.path.insert(0, os.getcwd())
    workers = args.workers or settings.workers
    if workers > 1 and settings.broker_url.startswith("memory:"):
        # Each worker would have a broker of its own: a message published through one
        # worker would never reach the subscribers of another. Refuse rather than split.
        print(
            f"sluicegate: --workers {workers} needs a shared broker: the in-memory broker lives in one "
            "process, so a message published through one worker would not reach the subscribers of "
            "another. Set SLUICEGATE_BROKER_URL to redis://... or nats://..., or run one worker.",
            file=sys.stderr,
        )
        return 2
    log_url = settings.log_url or default_log_url(settings.broker_url)
    if workers > 1 and log_url.startswith("spool:"):
        # The spool's files belong to one process: a second worker could not append to them.
        print(
            f"sluicegate: --workers {workers} needs a shared session log: the spool (SLUICEGATE_LOG_URL=spool://) "
            "keeps ingestion uploads and race points in files of one process. Set SLUICEGATE_LOG_URL to "
            "redis://... or nats://... (or leave it unset with a Redis or NATS broker), or run one worker.",
            file=sys.stderr,
        )
        return 2
    # The database first, here: unreachable, it is one line and status 2 rather than an
    # application start-up that fails with a traceback (its migration is then done once).
    _check_database(settings)
    # The workers read their settings again: they must know that they have siblings.
    os.environ["SLUICEGATE_WORKERS"] = str(workers)
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker writes its metrics here; a scrape of any worker sums them all.
        metrics_dir = settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    uvicorn.run(
        args.app,
        factory=True,
        host=args.host or settings.host,
        port=settings.port if args.port is None else args.port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.stream_max_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        timeout_graceful_shutdown=int(max(1, settings.shutdown_grace_seconds)),
        log_config=logging_config(settings.log_level, settings.log_format),
        access_log=settings.access_log,
        server_header=False,
        proxy_headers=False,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2, with one line on stderr, for a bad setting)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "token":
            return _token_create(args)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            name = "_".join(str(part) for part in error["loc"][:1]).upper()
            print(f"sluicegate: SLUICEGATE_{name}: {error['msg']}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


def _check_database(settings: Settings) -> None:
    """Open (and migrate) the database once and close it.

    Raises:
        ConfigurationError: it cannot be reached or migrated.
    """
    import asyncio

    from sluicegate.engines.store import Store, default_database_url

    async def check() -> None:
        store = Store(settings.database_url or default_database_url(settings.data_dir))
        await store.open()
        await store.close()

    asyncio.run(check())


def create_app_or_exit() -> Any:
    """The app factory ``sluicegate serve`` gives uvicorn: a bad setting found while the app
    is built (a broker URL, a key entry) is one line on stderr and exit status 2, not a
    traceback."""
    from sluicegate.app import create_app

    try:
        return create_app()
    except ConfigurationError as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
