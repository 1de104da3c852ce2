"""Settings from SLUICEGATE_* environment variables and a .env file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError

from sluicegate.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No stray SLUICEGATE_* variables, and an empty working directory for .env."""
    for name in list(os.environ):
        if name.upper().startswith("SLUICEGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_defaults() -> None:
    s = Settings()
    assert s.data_dir == Path("./data")
    assert s.port == 8000
    assert s.host == "127.0.0.1"
    assert s.workers == 1
    assert s.log_level == "info"
    assert s.sse_retry_ms == 3000
    assert s.stream_queue_size == 1000


def test_reads_prefixed_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_PORT", "9001")
    monkeypatch.setenv("SLUICEGATE_DATA_DIR", "/srv/sg")
    monkeypatch.setenv("SLUICEGATE_ACCESS_LOG", "true")
    monkeypatch.setenv("SLUICEGATE_SSE_HEARTBEAT_SECONDS", "0")
    s = Settings()
    assert (s.port, s.data_dir, s.access_log, s.sse_heartbeat_seconds) == (9001, Path("/srv/sg"), True, 0.0)


def test_environment_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("sluicegate_log_level", "debug")
    assert Settings().log_level == "debug"


def test_unprefixed_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "1234")
    assert Settings().port == 8000


def test_reads_dotenv_in_current_directory(clean_env: Path) -> None:
    (clean_env / ".env").write_text("SLUICEGATE_PORT=7000\nSLUICEGATE_WORKERS=4\nOTHER_THING=x\n")
    s = Settings()
    assert (s.port, s.workers) == (7000, 4)


def test_environment_overrides_dotenv(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / ".env").write_text("SLUICEGATE_PORT=7000\nSLUICEGATE_HOST=0.0.0.0\n")
    monkeypatch.setenv("SLUICEGATE_PORT", "7500")
    s = Settings()
    assert s.port == 7500
    assert s.host == "0.0.0.0"  # noqa: S104 - the value read from .env


def test_dotenv_in_another_directory_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".env").write_text("SLUICEGATE_PORT=7000\n")
    monkeypatch.chdir(elsewhere)
    assert Settings().port == 8000


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("SLUICEGATE_PORT", "70000", "port"),
        ("SLUICEGATE_PORT", "eighty", "port"),
        ("SLUICEGATE_WORKERS", "0", "workers"),
        ("SLUICEGATE_LOG_LEVEL", "verbose", "log_level"),
        ("SLUICEGATE_STREAM_QUEUE_SIZE", "0", "stream_queue_size"),
        ("SLUICEGATE_SHUTDOWN_GRACE_SECONDS", "0", "shutdown_grace_seconds"),
        ("SLUICEGATE_STREAM_MAX_MESSAGE_BYTES", "100", "stream_max_message_bytes"),
        ("SLUICEGATE_SSE_RETRY_MS", "-1", "sse_retry_ms"),
        ("SLUICEGATE_LEASE_SECONDS", "0", "lease_seconds"),
        ("SLUICEGATE_RACE_MAX_BUFFER_BYTES", "10", "race_max_buffer_bytes"),
    ],
)
def test_invalid_value_raises_validation_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert [e["loc"] for e in info.value.errors()] == [(field,)]


def test_invalid_value_in_dotenv_raises_validation_error(clean_env: Path) -> None:
    (clean_env / ".env").write_text("SLUICEGATE_PORT=-1\n")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert info.value.errors()[0]["loc"] == ("port",)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]
