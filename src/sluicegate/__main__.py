"""``python -m sluicegate`` is the CLI."""

from __future__ import annotations

from sluicegate.cli import main

raise SystemExit(main())
