"""Session logs for tests: a fresh namespace per test on the machine's Redis and NATS, a
fresh folder for the spool; :func:`drop_log` removes what a shared one stored."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from tests.brokers import NATS, REDIS, drop

if TYPE_CHECKING:
    from pathlib import Path

    from sluicegate.clock import Clock
    from sluicegate.engines.log import SessionLog

#: Every log kind the contract suite runs against.
LOG_KINDS = ("spool", "redis", "nats")


def fresh_log_url(kind: str) -> str:
    """A log URL in a namespace no other test uses."""
    tag = secrets.token_hex(4)
    if kind == "spool":
        return "spool://"
    if kind == "redis":
        return f"{REDIS}?prefix=sgtest-{tag}"
    if kind == "nats":
        return f"{NATS}?stream=SG_TEST_{tag.upper()}_LOG"
    raise ValueError(kind)


def make_log(url: str, data_dir: Path, clock: Clock, *, fsync: bool = True) -> SessionLog:
    from sluicegate.engines.log import log_from_url

    return log_from_url(url, data_dir=data_dir, fsync=fsync, clock=clock)


async def drop_log(url: str) -> None:
    """Remove everything the log at ``url`` stored on its server (its Redis prefix, its stream)."""
    await drop(url)
