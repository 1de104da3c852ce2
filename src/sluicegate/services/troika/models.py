"""The body of ``POST /api/troika/intelligent-chat/stream``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluicegate.errors import APIError, invalid_fields
from sluicegate.providers.tokencounts import parse_token_counts

__all__ = ["AgentRequest", "parse_agent_request"]

NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}$"
#: The largest body read: a query and a few identifiers.
AGENT_BODY_BYTES = 64 * 1024


class AgentRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: str = Field(min_length=1, max_length=4000)
    sessionId: str | None = Field(None, pattern=NAME)
    catalog: str = Field("default", pattern=NAME)
    chatbotId: str | None = Field(None, pattern=NAME)
    enableTTS: bool = False
    audioFormat: Literal["mp3", "wav", "opus"] = "mp3"
    tokenCounts: list[str] | str | None = None

    @property
    def encodings(self) -> tuple[str, ...]:
        """The encodings ``usage.tokenCounts`` is counted in (``tokenCounts``)."""
        return parse_token_counts(self.tokenCounts)


def parse_agent_request(body: bytes) -> AgentRequest:
    """Validate a request body.

    Raises:
        APIError: 400 ``Query is required`` for a missing or blank query, ``Invalid request``
            naming other bad fields, or a sentence for a body that is not a JSON object.
    """
    if not body.strip():
        raise APIError.invalid_argument("Query is required")
    try:
        request = AgentRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False)
        if any(err["type"] == "json_invalid" for err in errors) or any(err["type"] == "model_type" for err in errors):
            raise APIError.invalid_argument("Request body must be a JSON object") from None
        if any(err["loc"][:1] == ("query",) and err["type"] in ("missing", "string_too_short") for err in errors):
            raise APIError.invalid_argument("Query is required") from None
        raise invalid_fields(errors) from None
    if not request.query.strip():
        raise APIError.invalid_argument("Query is required")
    request.encodings  # noqa: B018 -- refuses an unknown encoding before the stream
    return request
