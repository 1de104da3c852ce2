"""Starting ``sluicegate``: a bad setting is one line naming it and exit status 2, log levels
in either case, and a warning when no API keys are configured."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.server import ROOT, UNIT, server_env, start_server

if TYPE_CHECKING:
    from pathlib import Path


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluicegate", *args],
        cwd=ROOT,
        env=server_env(tmp_path, env),
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("SLUICEGATE_LOG_LEVEL", "loud", "Input should be 'debug', 'info', 'warning' or 'error'"),
        ("SLUICEGATE_PORT", "eighty", "valid integer"),
        ("SLUICEGATE_BROKER_URL", "bogus://x", "unsupported scheme 'bogus'"),
        ("SLUICEGATE_API_KEYS", "no-role-here", "entry 1 must be 'key:role' or 'key:role:tenant'"),
        ("SLUICEGATE_DATABASE_URL", "postgresql+asyncpg://127.0.0.1:1/none", "cannot open the database"),
    ],
    ids=["log-level", "port", "broker", "api-key", "database"],
)
def test_a_bad_setting_is_one_line_naming_it_and_status_2(tmp_path: Path, setting: str, value: str, says: str) -> None:
    done = run_cli(tmp_path, "serve", "--port", "0", **{setting: value})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"sluicegate: {setting}") and says in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert "Uvicorn running" not in done.stderr + done.stdout


def test_an_engine_that_cannot_be_reached_at_start_up_is_one_line_too(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "serve", "--port", "0", SLUICEGATE_BROKER_URL="redis://127.0.0.1:1")
    assert done.returncode == 3  # uvicorn's status for a failed application start-up
    output = done.stderr + done.stdout
    assert "sluicegate: SLUICEGATE_BROKER_URL: cannot reach Redis" in output
    assert "Traceback" not in output and "Uvicorn running" not in output


def test_log_levels_are_accepted_in_capitals(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "token", "create", "--tenant", "3", SLUICEGATE_LOG_LEVEL="WARNING")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2  # a JWT: header.payload.signature


def test_a_server_without_api_keys_says_which_setting_to_set(tmp_path: Path) -> None:
    bare = start_server(None, tmp_path / "bare", {})
    try:
        bare.wait_for_log(r"No API keys are configured \(SLUICEGATE_API_KEYS or SLUICEGATE_API_KEYS_FILE\)")
    finally:
        bare.stop()
    keyed = start_server(None, tmp_path / "keyed", {"SLUICEGATE_API_KEYS": "sk-startup:user"})
    try:
        # The warning is logged while the app is built, before uvicorn says it runs.
        assert "No API keys are configured" not in keyed.log
    finally:
        keyed.stop()
