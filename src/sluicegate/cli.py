"""The ``sluicegate`` command.

.. code-block:: text

    sluicegate --version
    sluicegate serve [--host HOST] [--port PORT] [--workers N] [--app MODULE:FACTORY]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import sluicegate
from sluicegate.observability.logs import logging_config
from sluicegate.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

DEFAULT_APP = "sluicegate.app:create_app"


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
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings()
    sys.path.insert(0, os.getcwd())
    uvicorn.run(
        args.app,
        factory=True,
        host=args.host or settings.host,
        port=settings.port if args.port is None else args.port,
        workers=args.workers or settings.workers,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.stream_max_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        timeout_graceful_shutdown=int(max(1, settings.shutdown_grace_seconds)),
        log_config=logging_config(settings.log_level),
        access_log=settings.access_log,
        server_header=False,
        proxy_headers=False,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    parser.print_help()
    return 2
