"""Helpers for tests of the media core: a reader that tells how far a decoder has read."""

from __future__ import annotations

import io

__all__ = ["CountingReader"]


class CountingReader(io.BytesIO):
    """In-memory bytes that record how far ``read()`` has gone into them (PyAV reads through it)."""

    furthest = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.furthest = max(self.furthest, self.tell())
        return chunk
