"""The fifth seed's request body, validated into the exact 400 bodies it documents."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluicegate.errors import APIError, invalid_fields
from sluicegate.providers.llm.base import GenerationOptions

__all__ = ["GenerateOptions", "GenerateRequest", "parse_generate_request"]

#: ``agent`` becomes a metrics label: short, and from a small alphabet.
AGENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class GenerateOptions(BaseModel):
    """``options``: the seed's sampling options. Unknown names are refused, so typos are not ignored."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    topP: float | None = Field(None, gt=0, le=1)
    topK: int | None = Field(None, ge=1, le=1000)
    maxOutputTokens: int | None = Field(None, ge=1)

    def to_options(self, default_max_tokens: int) -> GenerationOptions:
        """The provider-side options; ``maxOutputTokens`` defaults to the configured ceiling."""
        return GenerationOptions(
            temperature=self.temperature,
            top_p=self.topP,
            top_k=self.topK,
            max_output_tokens=self.maxOutputTokens or default_max_tokens,
        )


class GenerateRequest(BaseModel):
    """``POST /api/stream`` (and the WebSocket ``generate`` message)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    model: str | None = Field(None, min_length=1, max_length=200)
    options: GenerateOptions = Field(default_factory=GenerateOptions)
    agent: str | None = Field(None, pattern=AGENT_PATTERN)


def parse_generate_request(
    body: bytes | dict[str, Any], *, max_prompt_chars: int, max_output_tokens: int
) -> GenerateRequest:
    """Validate a request body.

    Raises:
        APIError: 400 ``Prompt is required`` for a missing or blank prompt (the seed's
            body), ``Invalid options`` naming each bad option, ``Invalid request``
            naming other bad fields, or a sentence for a body that is not a JSON object.
    """
    if isinstance(body, bytes):
        if not body.strip():
            raise APIError.invalid_argument("Prompt is required")
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise APIError.invalid_argument("Request body must be a JSON object") from None
    else:
        value = body
    if not isinstance(value, dict):
        raise APIError.invalid_argument("Request body must be a JSON object")
    prompt = value.get("prompt")
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise APIError.invalid_argument("Prompt is required")
    if not isinstance(prompt, str):
        raise APIError.invalid_argument("Prompt must be a string")
    if len(prompt) > max_prompt_chars:
        raise APIError.invalid_argument(
            f"Prompt is too long: {len(prompt)} characters, the limit is {max_prompt_chars}",
            limit=max_prompt_chars,
        )
    try:
        request = GenerateRequest.model_validate(value)
    except ValidationError as exc:
        errors = exc.errors(include_input=False)
        if all(err["loc"][:1] == ("options",) for err in errors):
            names = sorted({str(err["loc"][1]) if len(err["loc"]) > 1 else "options" for err in errors})
            raise invalid_fields(errors, message=f"Invalid options: {', '.join(names)}") from None
        raise invalid_fields(errors) from None
    wanted = request.options.maxOutputTokens
    if wanted is not None and wanted > max_output_tokens:
        raise APIError.invalid_argument(
            f"Invalid options: maxOutputTokens must be at most {max_output_tokens}",
            fields=[
                {
                    "field": "options.maxOutputTokens",
                    "message": f"at most {max_output_tokens}",
                    "type": "less_than_equal",
                }
            ],
        )
    return request
