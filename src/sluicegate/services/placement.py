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
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import uvicorn
from sqlalchemy import update

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import ASGIApp

    from sluicegate.engines.store import Store

log = logging.getLogger("sluicegate.placement")

__all__ = ["ALONE", "OrphanedSlots", "Placement", "WorkerSocket", "claim_slot", "sockets_dir"]

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

    @property
    def spools(self) -> str:
        """The name of this process's spool folders (``spool``; ``spool-w<slot>`` for the
        workers of a node but slot 0, which keeps a single worker's)."""
        return f"spool-w{self.slot}" if self.slot else "spool"

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
        handle = _try_lock(folder / f"w{slot}.lock")
        if handle is not None:
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


class OrphanedSlots:
    """Adopts the sessions of worker slots this node no longer runs (``--workers`` was
    lowered): their spool folders move into this worker's, then their rows name this
    worker as owner (in that order, so that a crash in between loses nothing: the rows
    still name the old slot, whose folders are already here, and the next start moves
    nothing and renames the owner). An engine opened after the database and before the
    services that recover sessions.

    Args:
        placement: this process.
        store: the database.
        workers: the node's workers now.
        data_dir: the node's data folder.
        holdings: each service's session row class (with an ``owner`` column) and the
            name of its folder under ``data_dir`` (``races``, ``ingest``).
    """

    name = "orphaned_slots"

    def __init__(
        self, placement: Placement, store: Store, workers: int, data_dir: Path, holdings: list[tuple[Any, str]]
    ) -> None:
        self.placement = placement
        self.store = store
        self.workers = workers
        self.data_dir = data_dir
        self.holdings = holdings

    async def open(self) -> None:
        for slot, lock in await asyncio.to_thread(self._orphans):
            handle = await asyncio.to_thread(_try_lock, lock)
            if handle is None:
                continue  # a process of that slot still runs (a restart in progress)
            try:
                await self._adopt(slot)
                await asyncio.to_thread(lock.unlink, True)
            finally:
                handle.close()

    def _orphans(self) -> list[tuple[int, Path]]:
        folder = self.data_dir / "workers"
        if not folder.is_dir():
            return []
        found = [(lock.stem[1:], lock) for lock in folder.glob("w*.lock")]
        return sorted((int(slot), lock) for slot, lock in found if slot.isdigit() and int(slot) >= self.workers)

    async def _adopt(self, slot: int) -> None:
        old = Placement(node_url=self.placement.node_url, slot=slot)
        mine = self.placement.owner
        for row, kind in self.holdings:
            folder = self.data_dir / kind
            await asyncio.to_thread(_move_all, folder / old.spools, folder / self.placement.spools)
            async with self.store.session() as db:
                await db.execute(update(row).where(row.owner == old.owner).values(owner=mine))
        log.info("worker slot %d is gone: its sessions are now held by %s", slot, mine or "this node")

    async def close(self) -> None:
        """Nothing to release."""

    async def check(self) -> None:
        """Nothing to check."""


def _try_lock(path: Path) -> IO[bytes] | None:
    handle = path.open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _move_all(source: Path, target: Path) -> None:
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        entry.rename(target / entry.name)
    source.rmdir()
