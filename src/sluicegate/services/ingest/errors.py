"""The second seed's error bodies, and what an upload that cannot be taken is told."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluicegate.errors import APIError, ErrCode

if TYPE_CHECKING:
    from sluicegate.services.ingest.models import SessionState
    from sluicegate.services.ingest.prepare import Prepared

__all__ = ["batch_too_large", "invalid_data", "refusal", "session_not_found", "state_conflict"]


def session_not_found(session_id: str) -> APIError:
    return APIError(
        ErrCode.NOT_FOUND,
        "Session not found",
        details={
            "sessionId": session_id,
            "message": "No active session found with this ID",
            "suggestions": [
                "Verify session ID is correct",
                "Check if session expired (max 24 hours)",
                "Start a new session",
            ],
        },
    )


def batch_too_large(limit: int, received: int) -> APIError:
    return APIError(
        ErrCode.PAYLOAD_TOO_LARGE,
        "Batch size exceeded",
        details={
            "maxBatchSize": limit,
            "receivedBatchSize": received,
            "message": "Batch exceeds maximum allowed size",
            "suggestion": "Split data into smaller batches",
        },
    )


def invalid_data(batch_id: str, problems: list[dict[str, Any]]) -> APIError:
    return APIError(
        ErrCode.INVALID_ARGUMENT,
        "Invalid data format",
        details={
            "batchId": batch_id,
            "invalidRecords": problems,
            "suggestion": "Fix invalid records and resubmit batch",
        },
    )


def state_conflict(session_id: str, state: SessionState, message: str, suggestion: str | None = None) -> APIError:
    details: dict[str, Any] = {"sessionId": session_id, "status": state.value, "message": message}
    if suggestion:
        details["suggestion"] = suggestion
    return APIError(ErrCode.CONFLICT, "Session state conflict", details=details)


def refusal(prepared: Prepared, batch_id: str, limit: int) -> APIError:
    """Why an upload that :func:`~sluicegate.services.ingest.prepare.prepare` refused is refused."""
    if prepared.too_many is not None:
        return batch_too_large(limit, prepared.too_many)
    if prepared.problems:
        return invalid_data(batch_id, prepared.problems)
    if prepared.field_name:
        fields = [{"field": prepared.field_name, "message": prepared.error, "type": "value_error"}]
        return APIError.invalid_argument(prepared.error or "Invalid upload", fields=fields)
    return APIError.invalid_argument(prepared.error or "Invalid upload")
