"""Starting real Sluicegate servers (``sluicegate serve`` in a subprocess) for tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_RUNNING = re.compile(r"Uvicorn running on http://([\d.]+):(\d+)")

#: Provider settings read without the SLUICEGATE_ prefix: a test server never inherits them.
CLOUD_KEYS = frozenset({"GEMINI_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"})

#: One scalable unit of real time for tests that must wait on a real server.
UNIT = float(os.environ.get("SLUICEGATE_TEST_UNIT", "1.0"))


@dataclass
class Server:
    """A running server process and everything it logged."""

    process: subprocess.Popen[str]
    host: str = ""
    port: int = 0
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 5 * UNIT) -> re.Match[str]:
        """Wait until a log line matches ``pattern``; fail the test otherwise."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.log)
            if match:
                return match
            time.sleep(0.01)
        raise AssertionError(f"no log line matched {pattern!r} within {timeout}s; log:\n{self.log}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10 * UNIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.pump is not None:
            self.pump.join(5 * UNIT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def server_env(data_dir: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test server: this one's without any Sluicegate or provider
    setting, then the data folder and ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_") and k not in CLOUD_KEYS}
    full_env.update({"SLUICEGATE_DATA_DIR": str(data_dir), "SLUICEGATE_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    return full_env


def start_server(
    app: str | None, data_dir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Server:
    """Start ``sluicegate serve --port 0`` and wait until it listens."""
    full_env = server_env(data_dir, env)
    command = [sys.executable, "-m", "sluicegate", "serve", "--port", "0", *args]
    if app is not None:
        command += ["--app", app]
    process = subprocess.Popen(
        command, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = Server(process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with server._lock:
                server.lines.append(line.rstrip("\n"))

    server.pump = threading.Thread(target=pump, daemon=True)
    server.pump.start()
    deadline = time.monotonic() + 20 * UNIT
    while time.monotonic() < deadline:
        match = _RUNNING.search(server.log)
        if match:
            server.host, server.port = match.group(1), int(match.group(2))
            return server
        if process.poll() is not None:
            break
        time.sleep(0.02)
    server.stop()
    raise RuntimeError(f"server did not start; it logged:\n{server.log}")
