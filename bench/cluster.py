"""What the benchmarks of several nodes share: namespaces of the run's own on a shared
broker and session log (removed afterwards), a fresh PostgreSQL database (dropped
afterwards), the nodes themselves, the CPU time each process spent, and py-spy's view
of where a server's time went.

Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.brokers import drop  # noqa: E402 -- removes a broker namespace
from tests.logs import drop_log  # noqa: E402 -- removes a log namespace
from tests.server import Server, start_server  # noqa: E402 -- the same launcher the tests use

from sluicegate.engines.log import default_log_url  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Where the session-log engine's code lives: py-spy frames under it are the log's share.
LOG_CODE = "sluicegate/engines/log/"
#: Frames that stand for a part of a server in :func:`profile_summary`'s breakdown.
PARTS = {
    "log engine": LOG_CODE,
    "races service": "sluicegate/services/races/",
    "ingest service": "sluicegate/services/ingest/",
    "database": "sluicegate/engines/store/",
    "broker": "sluicegate/engines/broker/",
    "processing/leases": "sluicegate/services/processing.py",
    "uvicorn": "uvicorn/",
    # The clients' own code (also reached from the log engine; the NATS client parses
    # answers in a reader task of its own, outside the log engine's frames).
    "nats client": "site-packages/nats/",
    "redis client": "site-packages/redis/",
}
#: Processes whose CPU time a run reports (the shared servers, when they run here).
SERVERS = ("nats-server", "redis-server", "postgres")


def namespaced(url: str, tag: str, *, log: bool = False) -> str:
    """``url`` in a namespace of this run's own (a Redis key prefix, a JetStream stream)."""
    joiner = "&" if "?" in url else "?"
    if url.startswith("redis") and "prefix=" not in url:
        return f"{url}{joiner}prefix=bench-{tag}"
    if url.startswith("nats") and "stream=" not in url:
        return f"{url}{joiner}stream=BENCH_{tag.upper()}{'_LOG' if log else ''}"
    return url


@dataclass
class Backends:
    """The broker, session log and database URLs of a run, and what it created on them."""

    broker: str
    log: str | None  # SLUICEGATE_LOG_URL as set (None: the server's default)
    database_url: str | None
    created_database: str | None = None
    _tag: str = field(default_factory=lambda: os.urandom(4).hex())

    @property
    def effective_log(self) -> str:
        return self.log or default_log_url(self.broker)

    @property
    def log_is_shared(self) -> bool:
        return not self.effective_log.startswith("spool")

    def env(self, data_dir: Path) -> dict[str, str]:
        env = {
            "SLUICEGATE_BROKER_URL": self.broker,
            "SLUICEGATE_DATABASE_URL": self.database_url or f"sqlite+aiosqlite:///{data_dir / 'shared.db'}",
            "SLUICEGATE_OBJECT_STORE_URL": f"file://{data_dir / 'objects'}",
        }
        if self.log is not None:
            env["SLUICEGATE_LOG_URL"] = self.log
        return env

    def describe(self) -> dict[str, Any]:
        database = self.database_url or "sqlite (one file shared by the nodes)"
        return {
            "broker": self.broker,
            "log": self.effective_log,
            "database": _without_password(database),
            "object_store": "file (one folder shared by the nodes)",
        }


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=f"{parts.username}:***@{parts.hostname}:{parts.port}")
    return urlunsplit(parts)


@contextlib.contextmanager
def backends(broker: str, log: str | None, database_url: str | None, postgres: str | None) -> Iterator[Backends]:
    """The run's broker, log and database; whatever they stored is removed at the end.

    ``postgres`` (a server URL such as ``postgresql://postgres@127.0.0.1:5432``) asks for
    a database of the run's own, created here and dropped at the end.
    """
    tag = os.urandom(4).hex()
    chosen = Backends(namespaced(broker, tag), namespaced(log, tag, log=True) if log else None, database_url)
    if postgres is not None:
        chosen.created_database = f"sluicegate_bench_{tag}"
        asyncio.run(_postgres(postgres, f'CREATE DATABASE "{chosen.created_database}"'))
        server = urlsplit(postgres)
        path = f"/{chosen.created_database}"
        chosen.database_url = urlunsplit(server._replace(scheme="postgresql+asyncpg", path=path))
    try:
        yield chosen
    finally:
        asyncio.run(_drop(chosen, postgres))


async def _postgres(server: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(urlunsplit(urlsplit(server)._replace(scheme="postgresql", path="/postgres")))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _drop(chosen: Backends, postgres: str | None) -> None:
    if not chosen.broker.startswith("memory"):
        await drop(chosen.broker)
    if chosen.log_is_shared:
        await drop_log(chosen.effective_log)
    if chosen.created_database is not None and postgres is not None:
        await _postgres(postgres, f'DROP DATABASE IF EXISTS "{chosen.created_database}" WITH (FORCE)')


def start_nodes(
    count: int, app: str | None, data_dir: Path, env: dict[str, str], *, args: tuple[str, ...] = ()
) -> list[Server]:
    """``count`` nodes, each with a data folder of its own (``node<i>``), started one after
    the other (the first creates the tables); stopped again if one fails."""
    nodes: list[Server] = []
    try:
        for i in range(count):
            nodes.append(start_server(app, data_dir / f"node{i}", env, args=args))
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: list[Server]) -> dict[str, Any]:
    """Stop the nodes (SIGTERM, SIGKILL after 10 s) and any process of theirs that outlived
    them (an ingest worker left behind would keep the log pipe open, and the benchmark
    waiting); says how each ended, and what had to be killed, with the end of its log.
    With ``BENCH_KEEP_LOGS=<folder>`` each node's whole log is written there."""
    report: dict[str, Any] = {}
    for i, node in enumerate(nodes):
        family = _descendants(node.process.pid)
        started = time.monotonic()
        if node.process.poll() is None:
            node.process.terminate()
            try:
                node.process.wait(10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        stopped = round(time.monotonic() - started, 2)
        deadline = time.monotonic() + 3  # a child may take a moment to notice its parent is gone
        while any(_stat(pid) is not None for pid in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        leftovers = {pid: _command(pid) for pid in family if _stat(pid) is not None}
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        node.stop()  # closes the pipe and joins the log pump
        # -15: uvicorn ends by re-raising the SIGTERM it handled
        ended: dict[str, Any] = {"exit_code": node.process.returncode, "stop_seconds": stopped}
        if leftovers:
            ended["killed_leftover_processes"] = sorted(leftovers.values())
        keep = os.environ.get("BENCH_KEEP_LOGS")  # a folder: each node's log is written there
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / f"node{i}-{node.process.pid}.log").write_text("\n".join(node.lines))
        troubles = _troubles(node.lines)
        if troubles:
            ended["warnings_and_errors"] = troubles
        if node.process.returncode not in (0, -15) or leftovers:
            print(f"node{i} ended with {ended}; the end of its log:\n" + "\n".join(node.lines[-30:]), file=sys.stderr)
        report[f"node{i}"] = ended
    return report


def _troubles(lines: list[str]) -> dict[str, int]:
    """The node's WARNING and ERROR log lines, by message (its first 160 characters), counted."""
    found: Counter[str] = Counter()
    for line in lines:
        if '"level":"WARNING"' in line or '"level":"ERROR"' in line:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                found[line[:160]] += 1
                continue
            found[f"{record.get('level')} {record.get('logger')}: {str(record.get('message'))[:160]}"] += 1
    return dict(found.most_common(8))


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, (_, parent, _) in processes().items():
        children.setdefault(parent, []).append(child)
    found, stack = [], list(children.get(pid, ()))
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, ()))
    return found


# -- CPU time ----------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def processes() -> dict[int, tuple[str, int, float]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            try:
                name = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if stat is not None:
                found[int(entry)] = (name, *stat)
    return found


def cpu_snapshot(nodes: list[Server]) -> dict[str, float]:
    """CPU seconds so far of each node (with its child processes: workers, ingest pool),
    of the shared servers running here (:data:`SERVERS`), and of this process's children
    (the load generators that have ended)."""
    table = processes()
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in table.items():
        children.setdefault(parent, []).append(pid)

    def tree(pid: int) -> float:
        total, stack = 0.0, [pid]
        while stack:
            current = stack.pop()
            if current in table:
                total += table[current][2]
            stack.extend(children.get(current, ()))
        return total

    snapshot = {f"node{i}": tree(node.process.pid) for i, node in enumerate(nodes)}
    for name in SERVERS:
        snapshot[name] = sum(cpu for comm, _, cpu in table.values() if comm == name)
    own = os.times()
    snapshot["bench process"] = own.user + own.system
    snapshot["load (ended children)"] = own.children_user + own.children_system
    snapshot["machine busy"] = machine_busy()
    return snapshot


def machine_busy() -> float:
    """CPU seconds every CPU of the machine has spent busy (not idle, not waiting for I/O)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / _TICK


def cpu_spent(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """CPU cores each part used on average between two snapshots (1.0 = one core busy).

    ``others`` is what the machine spent beyond the parts named (other work on a shared
    machine, the kernel's own threads): a run where it is large was disturbed."""
    spent = {name: (after[name] - before.get(name, 0.0)) / seconds for name in after}
    busy = spent.pop("machine busy")
    spent["others"] = max(0.0, busy - sum(spent.values()))
    return {name: round(value, 2) for name, value in spent.items()}


# -- py-spy --------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` on server processes for a while, from a little after the load starts.

    Sampling costs the sampled process some speed (py-spy pauses it for each sample
    unless ``nonblocking``), so a profiled run's throughput is not a figure to report.
    """

    def __init__(
        self, pids: list[int], *, delay: float, seconds: float, subprocesses: bool = False, keep: Path | None = None
    ) -> None:
        self.pids = pids
        self.keep = keep
        self.delay = delay
        self.seconds = max(1, round(seconds))
        self.subprocesses = subprocesses
        self._folder = tempfile.TemporaryDirectory(prefix="sluicegate-pyspy-")
        self._runs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._timer: asyncio.TimerHandle | None = None

    def start_later(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.delay, self._start)

    def _start(self) -> None:
        spy = Path(sys.executable).with_name("py-spy")
        for pid in self.pids:
            out = Path(self._folder.name) / f"{pid}.txt"
            # --gil: only the thread holding the interpreter lock, i.e. CPU spent running Python
            # and the C it calls with the lock held; a thread blocked in fdatasync() is not
            # CPU (py-spy would count it as busy).
            command = [str(spy), "record", "--format", "raw", "--full-filenames", "--nonblocking", "--gil"]
            command += ["-r", "200", "-d", str(self.seconds), "-o", str(out), "-p", str(pid)]
            if self.subprocesses:
                command.append("--subprocesses")
            self._runs.append((subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out))

    def results(self) -> list[dict[str, Any]]:
        """One summary per sampled process (waits for py-spy to finish)."""
        summaries = []
        for run, out in self._runs:
            _, errors = run.communicate(timeout=self.seconds + 60)
            if run.returncode != 0 or not out.exists():
                summaries.append({"error": errors.decode(errors="replace")[-300:]})
                continue
            summaries.append(profile_summary(out.read_text()))
            if self.keep is not None:
                self.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(out, self.keep / f"pyspy-{out.stem}-{int(time.time())}.txt")
        self._folder.cleanup()
        return summaries


def profile_summary(raw: str) -> dict[str, Any]:
    """From py-spy's raw output (one ``frame;frame;... count`` line per stack, samples
    of the thread holding the GIL only): the share of samples inside each part of :data:`PARTS` (a sample
    counts for a part when any of its frames is there), and the functions that take the
    most samples themselves (the innermost frame). ``log_or_client_share`` counts a
    sample inside the log engine or inside the NATS or Redis client library."""
    total = with_client = 0
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        for part, marker in PARTS.items():
            if marker in stack:
                parts[part] += count
        if any(PARTS[part] in stack for part in ("log engine", "nats client", "redis client")):
            with_client += count
        leaves[_short(stack.rpartition(";")[2])] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "log_share": round(parts["log engine"] / total, 3),
        # The log engine, or the NATS/Redis client anywhere (the broker's few messages included).
        "log_or_client_share": round(with_client / total, 3),
        "inclusive_shares": {part: round(parts[part] / total, 3) for part in PARTS},
        "top_self": [[name, round(count / total, 3)] for name, count in leaves.most_common(12)],
    }


def _short(frame: str) -> str:
    """``func (/long/path/pkg/mod.py:12)`` as ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.rpartition(marker)[2]
            break
    return f"{name} ({path})"
