"""Engine errors as the API's errors: the one place where a failure of the database, a
session log or the object store becomes an HTTP status and a JSON body.

Engines raise their own errors (:class:`~sluicegate.engines.store.StoreUnavailable`,
:class:`~sluicegate.engines.log.LogUnavailable`, ...); the app's exception handlers and
the stream transport call :func:`api_error` on whatever escapes a route, so a service
only catches an engine error where it means something to the product (a sealed log is
a finished session). The messages never carry a driver's text: it may hold paths or
server dumps.
"""

from __future__ import annotations

from sluicegate.engines.log import LogClosed, LogEntryTooLarge, LogError, LogNotFound, LogUnavailable
from sluicegate.engines.objects import InvalidKey, ObjectNotFound, ObjectStoreUnavailable
from sluicegate.engines.store import StoreConflict, StoreUnavailable
from sluicegate.errors import APIError, ErrCode

__all__ = ["ENGINE_ERRORS", "api_error"]

#: The engine errors :func:`api_error` knows (the app registers a handler for each).
ENGINE_ERRORS: tuple[type[Exception], ...] = (
    StoreUnavailable,
    StoreConflict,
    LogError,
    ObjectStoreUnavailable,
    ObjectNotFound,
    InvalidKey,
)


def api_error(exc: BaseException) -> APIError | None:
    """The client's view of an engine error; ``None`` for anything else."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, StoreUnavailable):
        return APIError.unavailable("The database is unavailable; retry shortly")
    if isinstance(exc, StoreConflict):
        return APIError.already_exists("It already exists")
    if isinstance(exc, LogUnavailable):
        return APIError.unavailable("The session log is unavailable; retry shortly")
    if isinstance(exc, LogEntryTooLarge):
        return APIError.payload_too_large("The upload is larger than the session log takes in one append")
    if isinstance(exc, LogClosed):
        return APIError.failed_precondition(f"The session takes no data: it is {exc.state.value}")
    if isinstance(exc, LogNotFound):
        return APIError.failed_precondition("The session takes no data: it is finished")
    if isinstance(exc, LogError):
        return APIError.internal("Failed to store the data")
    if isinstance(exc, ObjectStoreUnavailable):
        return APIError.unavailable("The object store is unavailable; retry shortly")
    if isinstance(exc, ObjectNotFound):
        return APIError(ErrCode.DATA_LOSS, "A stored object is missing")
    if isinstance(exc, InvalidKey):
        return APIError.internal()
    return None
