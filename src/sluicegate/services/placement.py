"""Which process holds a session, and how another process reaches it.

Ingestion and race sessions keep their spool, batching and flusher in the one process
that opened them (their *holder*, recorded with the session as its ``owner``). A
process is named by its node's URL (``SLUICEGATE_NODE_URL``) and, when the node runs
several workers (``sluicegate serve --workers N``), by its worker slot:
``<node url>#w<slot>``. Slot 0 is named by the node URL alone, as a single-worker node
is, so a node that goes from one worker to several keeps its sessions.

Each worker of a multi-worker node also listens on a Unix socket of its own
(``<sockets>/w<slot>.sock``): a request for a session held by a sibling worker is
passed on through it; one held by another node goes to that node's URL, whose worker
passes it on again if needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import ASGIApp

__all__ = ["ALONE", "Placement", "WorkerSocket", "claim_slot", "sockets_dir"]

UNIX = "unix:"


@dataclass(frozen=True, slots=True)
class Placement:
    """This process's place among the holders of sessions.

    Args:
        node_url: this node, as other nodes reach it (None: one node only).
        slot: this worker's slot, when the node runs several workers.
        sockets: the folder of the workers' sockets, when it does.
    """

    node_url: str | None = None
    slot: int | None = None
    sockets: Path | None = None

    @property
    def coordinated(self) -> bool:
        """Whether other processes may hold sessions (several nodes or several workers)."""
        return self.node_url is not None or self.slot is not None

    @property
    def owner(self) -> str | None:
        """What this process records as the owner of the sessions it opens."""
        if not self.slot:
            return self.node_url
        return f"{self.node_url or ''}#w{self.slot}"

    def socket(self, slot: int) -> Path:
        """Where worker ``slot`` of this node listens."""
        assert self.sockets is not None  # noqa: S101 -- only asked on multi-worker nodes
        return self.sockets / f"w{slot}.sock"

    def route(self, owner: str | None) -> str | None:
        """Where to pass a request for a session recorded with ``owner``: a node's URL or
        ``unix:<socket>`` of a sibling worker; None when this process answers it."""
        if not self.coordinated or owner == self.owner:
            return None
        base, _, slot = (owner or "").partition("#w")
        node = base or None
        if node != self.node_url:
            return node  # another node (None: recorded before nodes were named; answered here)
        if self.slot is None:
            return None
        target = int(slot) if slot.isdigit() else 0
        return None if target == self.slot else UNIX + str(self.socket(target))


#: One node of one worker: every session is this process's.
ALONE = Placement()


def sockets_dir(data_dir: Path) -> Path:
    """A short folder for the workers' sockets (a Unix socket path has ~100 characters at
    most, and data folders can be long): one per data folder, in the temporary folder."""
    tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"sluicegate-{tag}"
    folder.mkdir(mode=0o700, exist_ok=True)
    found = folder.stat()
    if found.st_uid != os.getuid() or found.st_mode & 0o077:  # requests between workers carry credentials
        raise RuntimeError(f"{folder} must belong to this user and be private (mode 700): remove it")
    return folder


def claim_slot(data_dir: Path, workers: int) -> tuple[int, IO[bytes]]:
    """Take the first free worker slot of this node (a lock held while the process lives;
    a worker that dies frees its slot for the one started in its place, which takes over
    its sessions).

    Returns:
        The slot and the open lock file, which the caller keeps open.

    Raises:
        RuntimeError: every slot is taken.
    """
    folder = data_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(workers):
        handle = (folder / f"w{slot}.lock").open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        with contextlib.suppress(OSError):
            os.set_inheritable(handle.fileno(), False)
        return slot, handle
    raise RuntimeError(f"all {workers} worker slots of {folder} are taken: is another server using this data folder?")


class _SocketServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the worker's own server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WorkerSocket:
    """Serves this worker's app on its Unix socket, for its sibling workers (an engine,
    opened last and closed first). Set :attr:`app` before opening it."""

    name = "worker_socket"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.app: ASGIApp | None = None
        self._server: _SocketServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        assert self.app is not None  # noqa: S101 -- set by create_app
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        self.path.unlink(missing_ok=True)  # left by a worker that died
        config = uvicorn.Config(
            self.app,
            uds=str(self.path),
            lifespan="off",
            http="httptools",
            ws="websockets-sansio",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
        )
        server = self._server = _SocketServer(config)
        self._task = asyncio.create_task(server.serve())
        while not server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError(f"the worker socket {self.path} could not be served")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.path.unlink(missing_ok=True)  # the folder stays: a sibling may be starting

    async def check(self) -> None:
        """Nothing to check: the worker's own server answers for it."""
