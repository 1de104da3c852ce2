"""Why an uploaded file could not be used, each with the ``code`` of its ``error`` event.

::

    ContextFileError (SluicegateError, ValueError)
    ├── UnsupportedFileType   UNSUPPORTED_FILE_TYPE  not one of the recognised types
    ├── ExtractionFailed      EXTRACTION_FAILED      recognised, but the parser refused it
    └── EmptyDocument         EMPTY_DOCUMENT         readable, but no text in it

:func:`sluicegate.streaming.events.error_code` reads ``stream_code``; the message is the
event's ``error`` sentence, written for the person who uploaded the file.
"""

from __future__ import annotations

from sluicegate.errors import SluicegateError

__all__ = ["ContextFileError", "EmptyDocument", "ExtractionFailed", "UnsupportedFileType"]


class ContextFileError(SluicegateError, ValueError):
    """An uploaded file that cannot become context."""

    stream_code = "INVALID_FILE"


class UnsupportedFileType(ContextFileError):
    """The content is none of PDF, DOCX, JSON, CSV, Markdown or plain UTF-8 text."""

    stream_code = "UNSUPPORTED_FILE_TYPE"


class ExtractionFailed(ContextFileError):
    """The content looks like a known type, but its parser could not read it (a corrupt PDF)."""

    stream_code = "EXTRACTION_FAILED"


class EmptyDocument(ContextFileError):
    """The file was read, but holds no text (an empty file, a scanned PDF without a text layer)."""

    stream_code = "EMPTY_DOCUMENT"
