"""Structured logs: one JSON object per line, or readable text on a terminal.

``SLUICEGATE_LOG_FORMAT`` picks ``json``, ``text`` or ``auto`` (text when stderr is a
terminal). Fields passed as ``extra=`` (``stream_id``, ``route``, ``tenant``,
``duration_ms``...) become JSON keys, or ``key=value`` pairs in text.

Whatever the format, credentials never reach the output: query parameters named
``secret``, ``token``, ``access_token``, ``api_key`` or ``key`` and ``Bearer``
values are replaced with ``[redacted]`` in every line, including uvicorn's.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JSONFormatter", "TextFormatter", "logging_config", "redact"]

_SECRET_QUERY = re.compile(r"(?i)([?&](?:secret|token|access_token|api_key|apikey|key)=)[^&\s\"']*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-_.~+/=]+")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


def redact(text: str) -> str:
    """Replace credentials in a log line with ``[redacted]``."""
    return _BEARER.sub(r"\1[redacted]", _SECRET_QUERY.sub(r"\1[redacted]", text))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, extras, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in _extras(record).items():
            entry[key] = _scrub(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=lambda v: redact(str(v)), option=orjson.OPT_NON_STR_KEYS).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if extras:
            text += " {" + ", ".join(f"{k}={v}" for k, v in extras.items()) + "}"
        return redact(text)


def logging_config(level: str, fmt: str = "auto") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and Sluicegate's own loggers."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    formatter = (
        "sluicegate.observability.logs.JSONFormatter"
        if fmt == "json"
        else ("sluicegate.observability.logs.TextFormatter")
    )
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}},
        "loggers": {
            "sluicegate": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
    }
