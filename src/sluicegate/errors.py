"""Errors raised by Sluicegate, and how they reach clients.

Every error a client can see is an :class:`APIError` with a stable ``code``. The code
decides the HTTP status and the WebSocket close code, and the JSON body is always
``{"error": <message>, "code": <code>, ...details}``: a flat object whose ``error`` is
a human sentence, like the bodies the seed documents show, with ``code`` added so
programs need not parse sentences.

Exception tree::

    SluicegateError
    ├── APIError                     an error for the client (status, close code, body)
    ├── ConfigurationError(ValueError)   a setting is wrong; raised at start-up
    ├── SSEFieldError(ValueError)    an SSE event name or id would break the framing
    └── StreamClosed(ConnectionError)    the peer of a stream has gone

WebSocket close codes follow one rule: ``4000 + HTTP status`` (``not_found`` closes
with 4404), except ``internal`` and ``data_loss`` which use the standard 1011, and
``slow_consumer`` which uses the standard 1008 (policy violation).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "APIError",
    "ConfigurationError",
    "ErrCode",
    "SSEFieldError",
    "SluicegateError",
    "StreamClosed",
    "invalid_fields",
]


class SluicegateError(Exception):
    """Root of every exception Sluicegate raises on purpose."""


class ConfigurationError(SluicegateError, ValueError):
    """A setting is missing or invalid. The message names the setting."""


class SSEFieldError(SluicegateError, ValueError):
    """An SSE event name, id or comment contains a character that would break framing."""


class StreamClosed(SluicegateError, ConnectionError):
    """The client of a stream has disconnected, or the stream was closed."""


class ErrCode(enum.StrEnum):
    """Stable error codes, with their HTTP status and WebSocket close code."""

    CANCELLED = "cancelled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    SLOW_CONSUMER = "slow_consumer"

    @property
    def http_status(self) -> int:
        """The HTTP status an error with this code answers with."""
        return _HTTP_STATUS[self]

    @property
    def close_code(self) -> int:
        """The WebSocket close code a stream failing with this code closes with."""
        special = _CLOSE_CODE.get(self)
        return special if special is not None else 4000 + self.http_status


_HTTP_STATUS: dict[ErrCode, int] = {
    ErrCode.CANCELLED: 499,
    ErrCode.UNKNOWN: 500,
    ErrCode.INVALID_ARGUMENT: 400,
    ErrCode.DEADLINE_EXCEEDED: 504,
    ErrCode.NOT_FOUND: 404,
    ErrCode.ALREADY_EXISTS: 409,
    ErrCode.PERMISSION_DENIED: 403,
    ErrCode.RESOURCE_EXHAUSTED: 429,
    ErrCode.FAILED_PRECONDITION: 400,
    ErrCode.ABORTED: 409,
    ErrCode.OUT_OF_RANGE: 400,
    ErrCode.UNIMPLEMENTED: 501,
    ErrCode.INTERNAL: 500,
    ErrCode.UNAVAILABLE: 503,
    ErrCode.DATA_LOSS: 500,
    ErrCode.UNAUTHENTICATED: 401,
    ErrCode.PAYLOAD_TOO_LARGE: 413,
    ErrCode.METHOD_NOT_ALLOWED: 405,
    ErrCode.CONFLICT: 409,
    ErrCode.SLOW_CONSUMER: 429,
}

_CLOSE_CODE: dict[ErrCode, int] = {
    ErrCode.INTERNAL: 1011,
    ErrCode.UNKNOWN: 1011,
    ErrCode.DATA_LOSS: 1011,
    ErrCode.SLOW_CONSUMER: 1008,
}

_RESERVED_KEYS = frozenset({"error", "code"})


class APIError(SluicegateError):
    """An error meant for the client, raised from a route or a stream handler.

    Args:
        code: the stable error code; decides the HTTP status and the close code.
        message: a sentence for humans; becomes the body's ``error`` field.
        details: extra top-level fields of the JSON body (the seeds' bodies carry
            fields such as ``sessionId`` or ``suggestions`` beside ``error``).
        headers: extra HTTP headers for the error response (``Retry-After``, ...).

    Raises:
        ValueError: when ``details`` tries to replace ``error`` or ``code``.
    """

    def __init__(
        self,
        code: ErrCode,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if details and _RESERVED_KEYS.intersection(details):
            raise ValueError("APIError details may not set 'error' or 'code'")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def status(self) -> int:
        """The HTTP status of this error."""
        return self.code.http_status

    @property
    def close_code(self) -> int:
        """The WebSocket close code of this error."""
        return self.code.close_code

    def body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        return {"error": self.message, "code": self.code.value, **self.details}

    def __repr__(self) -> str:
        return f"APIError({self.code.value!r}, {self.message!r})"

    # Constructors named after the codes, as in the third seed (`APIError.unauthenticated(...)`).

    @classmethod
    def invalid_argument(cls, message: str, **details: Any) -> APIError:
        """A 400: the request or message is malformed."""
        return cls(ErrCode.INVALID_ARGUMENT, message, details=details)

    @classmethod
    def unauthenticated(cls, message: str, **details: Any) -> APIError:
        """A 401: no valid credentials were presented."""
        return cls(ErrCode.UNAUTHENTICATED, message, details=details)

    @classmethod
    def permission_denied(cls, message: str, **details: Any) -> APIError:
        """A 403: the credentials do not allow this."""
        return cls(ErrCode.PERMISSION_DENIED, message, details=details)

    @classmethod
    def not_found(cls, message: str, **details: Any) -> APIError:
        """A 404: the named thing does not exist (or belongs to another tenant)."""
        return cls(ErrCode.NOT_FOUND, message, details=details)

    @classmethod
    def already_exists(cls, message: str, **details: Any) -> APIError:
        """A 409: the thing to create exists already."""
        return cls(ErrCode.ALREADY_EXISTS, message, details=details)

    @classmethod
    def failed_precondition(cls, message: str, **details: Any) -> APIError:
        """A 400: the system is not in a state where this can be done."""
        return cls(ErrCode.FAILED_PRECONDITION, message, details=details)

    @classmethod
    def resource_exhausted(cls, message: str, **details: Any) -> APIError:
        """A 429: a limit or quota was reached."""
        return cls(ErrCode.RESOURCE_EXHAUSTED, message, details=details)

    @classmethod
    def payload_too_large(cls, message: str, **details: Any) -> APIError:
        """A 413: the body or message is over the configured limit."""
        return cls(ErrCode.PAYLOAD_TOO_LARGE, message, details=details)

    @classmethod
    def unavailable(cls, message: str, **details: Any) -> APIError:
        """A 503: a dependency is down or a queue is full; retry later."""
        return cls(ErrCode.UNAVAILABLE, message, details=details)

    @classmethod
    def internal(cls, message: str = "Internal server error", **details: Any) -> APIError:
        """A 500: a bug or an unexpected failure. The client never sees a traceback."""
        return cls(ErrCode.INTERNAL, message, details=details)

    @classmethod
    def slow_consumer(cls, message: str, **details: Any) -> APIError:
        """The client read too slowly and its bounded queue overflowed."""
        return cls(ErrCode.SLOW_CONSUMER, message, details=details)


def invalid_fields(
    errors: Sequence[Mapping[str, Any]],
    *,
    message: str = "Invalid request",
    drop_prefix: tuple[str, ...] = (),
) -> APIError:
    """Turn pydantic-style validation errors into one ``invalid_argument`` error.

    The body names every offending field::

        {"error": "Invalid request", "code": "invalid_argument",
         "fields": [{"field": "body.prompt", "message": "Field required", "type": "missing"}]}

    Args:
        errors: the ``errors()`` of a pydantic ``ValidationError`` or FastAPI's
            ``RequestValidationError``.
        message: the sentence for the body's ``error``.
        drop_prefix: leading location parts to leave out of the field names.

    Input values are not echoed back: they may hold secrets.
    """
    fields = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        while loc and loc[0] in drop_prefix:
            loc.pop(0)
        fields.append(
            {
                "field": ".".join(loc) or "(root)",
                "message": str(err.get("msg", "invalid value")),
                "type": str(err.get("type", "value_error")),
            }
        )
    return APIError(ErrCode.INVALID_ARGUMENT, message, details={"fields": fields})
