"""Remote providers over HTTP streams: any OpenAI-compatible server, and Google's Gemini.

Both speak Server-Sent Events upstream; both are read with the same incremental
decoder the SDK uses (:class:`sluicegate.streaming.sse.SSEDecoder`). Cancelling a
generation closes the upstream connection, so the upstream server sees the disconnect
and stops generating too.

The upstream requests go through aiohttp rather than httpx: on this hot path, httpx's
pure-Python HTTP/1.1 stack cost five times the CPU per request and twice per chunk
(``docs/performance.md``). One pooled session per provider, connections reused.
"""

from __future__ import annotations

import abc
import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from sluicegate.providers.llm.base import Generation, GenerationRequest, ProviderError, Usage
from sluicegate.streaming.sse import SSEDecoder

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

__all__ = ["GeminiProvider", "OpenAICompatibleProvider", "RemoteGeneration"]

_ERROR_BODY_LIMIT = 2000


def _upstream_message(status: int, body: bytes) -> str:
    """A one-line description of an upstream error answer."""
    detail: Any = body[:_ERROR_BODY_LIMIT].decode(errors="replace").strip()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict):
            detail = error.get("message") or detail
        elif isinstance(error, str):
            detail = error
    return f"upstream answered {status}: {detail}" if detail else f"upstream answered {status}"


class RemoteGeneration(Generation):
    """A generation read from an upstream SSE response; subclasses parse one event's data."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        super().__init__()
        self._response = response
        self.finished = False

    async def pieces(self) -> AsyncGenerator[str]:
        decoder = SSEDecoder()
        try:
            async for raw in self._response.content.iter_any():
                if self.finished:
                    continue  # read to the end, so that the connection goes back to the pool
                for event in decoder.feed(raw):
                    for piece in self.parse(event.data):
                        if piece:
                            if self.usage.estimated:
                                self.usage.completion_tokens += 1
                            yield piece
                    if self.finished:
                        break
        except aiohttp.ClientError as exc:
            raise ProviderError(f"upstream stream failed: {type(exc).__name__}: {exc}") from exc
        finally:
            # Read to the end: the connection goes back to the pool; cut short: it is closed.
            self._response.release() if self._response.content.at_eof() else self._response.close()

    @abc.abstractmethod
    def parse(self, data: str) -> list[str]:
        """The text pieces in one event's data; sets :attr:`usage` and :attr:`finished`."""

    async def stop(self) -> None:
        if not self._response.content.at_eof():
            self._response.close()


def _loads(data: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProviderError(f"upstream sent an event that is not JSON: {data[:200]!r}") from exc
    if not isinstance(value, dict):
        raise ProviderError(f"upstream sent an event that is not a JSON object: {data[:200]!r}")
    return value


def _event_error(value: dict[str, Any]) -> ProviderError | None:
    error = value.get("error")
    if error is None:
        return None
    message = error.get("message") if isinstance(error, dict) else error
    return ProviderError(f"upstream error: {message}")


class _HTTPProvider:
    """What both remote providers share: one pooled ``aiohttp.ClientSession`` and the POST."""

    name = "remote"

    def __init__(self, *, timeout: float) -> None:
        self._timeout = timeout  # to connect and get the answer's headers; a stream may pause between tokens
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
                raise_for_status=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> aiohttp.ClientResponse:
        if self._session is None:
            await self.open()
        assert self._session is not None  # noqa: S101 -- opened just above
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._session.post(
                    url,
                    data=orjson.dumps(body),
                    headers={"content-type": "application/json", "accept": "text/event-stream", **headers},
                )
        except TimeoutError:
            raise ProviderError(f"{self.name} upstream did not answer within {self._timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise ProviderError(f"cannot reach {self.name} upstream: {type(exc).__name__}: {exc}") from exc
        if response.status >= 400:
            try:
                body_bytes = await response.read()
            finally:
                response.release()
            raise ProviderError(_upstream_message(response.status, body_bytes))
        return response


# -- OpenAI-compatible -------------------------------------------------------------------


class _OpenAIGeneration(RemoteGeneration):
    def parse(self, data: str) -> list[str]:
        if data.strip() == "[DONE]":
            self.finished = True
            return []
        value = _loads(data)
        error = _event_error(value)
        if error is not None:
            raise error
        usage = value.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        pieces: list[str] = []
        for choice in value.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                pieces.append(content)
        return pieces


class OpenAICompatibleProvider(_HTTPProvider):
    """Any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, llama.cpp's server).

    Args:
        base_url: up to and including ``/v1`` (``http://127.0.0.1:8000/v1``).
        api_key: sent as a bearer token when set.
        timeout: seconds to connect and to receive the response headers.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/") if base_url else None
        self._api_key = api_key

    def unavailable_reason(self) -> str | None:
        if self.base_url is None:
            return "no OpenAI-compatible endpoint is configured (set SLUICEGATE_OPENAI_BASE_URL or OPENAI_API_KEY)"
        return None

    def build_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The Chat Completions body for ``request`` (``top_k`` only when set: OpenAI itself rejects it)."""
        options = request.options
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": "user", "content": request.prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        body.update(options.named("temperature", "top_p", "top_k", "max_tokens"))
        return body

    async def start(self, request: GenerationRequest) -> Generation:
        reason = self.unavailable_reason()
        if reason is not None:
            raise ProviderError(reason)
        headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        response = await self._post(f"{self.base_url}/chat/completions", self.build_body(request), headers)
        generation = _OpenAIGeneration(response)
        generation.usage.estimated = True  # until the usage frame arrives
        return generation


# -- Gemini --------------------------------------------------------------------------------

_BLOCKED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE"})


class _GeminiGeneration(RemoteGeneration):
    def parse(self, data: str) -> list[str]:
        value = _loads(data)
        error = _event_error(value)
        if error is not None:
            raise error
        metadata = value.get("usageMetadata")
        if isinstance(metadata, dict):
            self.usage = Usage(
                int(metadata.get("promptTokenCount") or 0),
                int(metadata.get("candidatesTokenCount") or 0),
            )
        feedback = value.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            raise ProviderError(f"the prompt was blocked: {feedback['blockReason']}")
        pieces: list[str] = []
        for candidate in (value.get("candidates") or ())[:1]:
            content = candidate.get("content") or {}
            for part in content.get("parts") or ():
                text = part.get("text")
                if isinstance(text, str) and not part.get("thought"):
                    pieces.append(text)
            reason = candidate.get("finishReason")
            if reason in _BLOCKED:
                raise ProviderError(f"generation stopped: {reason}")
        return pieces


class GeminiProvider(_HTTPProvider):
    """Google's Gemini API, ``models/{model}:streamGenerateContent?alt=sse`` over aiohttp.

    Args:
        api_key: ``GEMINI_API_KEY``, sent as the ``x-goog-api-key`` header.
        base_url: the API root, ``https://generativelanguage.googleapis.com/v1beta`` by default.
    """

    name = "gemini"

    def __init__(
        self,
        api_key: str | None,
        base_url: str = "https://generativelanguage.googleapis.com/v1beta",
        *,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key

    def unavailable_reason(self) -> str | None:
        return None if self._api_key else "GEMINI_API_KEY is not set"

    def build_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The ``GenerateContentRequest`` body for ``request``."""
        options = request.options
        config = options.named("temperature", "topP", "topK", "maxOutputTokens")
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": request.prompt}]}]}
        if config:
            body["generationConfig"] = config
        return body

    def url(self, model: str) -> str:
        """The streaming URL for ``model``."""
        return f"{self.base_url}/models/{model}:streamGenerateContent?alt=sse"

    async def start(self, request: GenerationRequest) -> Generation:
        if not self._api_key:
            raise ProviderError("GEMINI_API_KEY is not set")
        response = await self._post(
            self.url(request.model), self.build_body(request), {"x-goog-api-key": self._api_key}
        )
        generation = _GeminiGeneration(response)
        generation.usage.estimated = True
        return generation
