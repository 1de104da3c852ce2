"""Logs and metrics: how Sluicegate tells its operators what it does."""

from __future__ import annotations

from sluicegate.observability.logs import logging_config, redact

__all__ = ["logging_config", "redact"]
