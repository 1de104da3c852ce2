"""Forwarding a request to the node (or worker) that holds its state (one database).

An ingestion session's spool and batches live on the node that started it (its
*holder*, ``SLUICEGATE_NODE_URL``). Another node that receives a request for it passes
the request on, as it came (method, path, query, body, credentials), and hands back the
holder's answer. The client sees one service: any node takes any request.

A forwarded request carries ``X-Sluicegate-Forwarded: <unix seconds>.<HMAC-SHA256>``,
signed with the secret every node shares (the bearer-token secret) over the time, the
method and the target. The holder skips the rate limit for it: the receiving node has
already counted it, so it counts once. A signature older than a minute, or for another
request, is ignored (the request is counted as any other).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import aiohttp
from starlette.responses import Response

from sluicegate.errors import APIError
from sluicegate.services.placement import UNIX

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection, Request
    from starlette.types import Scope

    from sluicegate.clock import Clock

__all__ = ["FORWARDED_HEADER", "Forwarded", "Forwarder"]

FORWARDED_HEADER = "x-sluicegate-forwarded"
_FORWARDED_KEY = FORWARDED_HEADER.encode()
#: Seconds a signature stays valid (nodes' clocks may differ by that much).
MAX_AGE_SECONDS = 60
#: Request headers passed on: credentials and what describes the body.
_PASSED = frozenset({"authorization", "x-api-key", "content-type", "accept", "user-agent"})
#: Response headers handed back.
_RETURNED = frozenset({"content-type", "retry-after"})


class Forwarded(Exception):
    """Raised by a dependency with the holder's answer, which the app sends as it is."""

    def __init__(self, response: Response) -> None:
        super().__init__("forwarded")
        self.response = response


def _target(scope: Scope) -> str:
    query = scope.get("query_string", b"")
    path: str = scope["path"]
    return f"{path}?{query.decode('latin-1')}" if query else path


class Forwarder:
    """Passes requests on to other nodes (an engine: its connection pool closes at shutdown).

    Args:
        secret: shared by every node; signs forwarded requests.
        clock: the time source of signatures.
        timeout: seconds a forwarded request may take in all.
    """

    name = "forwarder"

    def __init__(self, secret: bytes, clock: Clock, *, timeout: float = 60.0) -> None:
        self._secret = secret
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._siblings: dict[str, aiohttp.ClientSession] = {}  # by socket: the workers of this node

    async def open(self) -> None:
        """Nothing to do: the pool is made on first use."""

    async def close(self) -> None:
        for session in [self._session, *self._siblings.values()]:
            if session is not None:
                await session.close()
        self._session = None
        self._siblings.clear()

    def _client(self, node: str) -> tuple[aiohttp.ClientSession, str]:
        """The connection pool for ``node`` and the base of its URLs."""
        if node.startswith(UNIX):  # a sibling worker of this node, on its Unix socket
            session = self._siblings.get(node)
            if session is None:
                connector = aiohttp.UnixConnector(path=node.removeprefix(UNIX))
                session = self._siblings[node] = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            return session, "http://localhost"
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session, node

    async def check(self) -> None:
        """Nothing to check: other nodes are checked by the load balancer."""

    def _signature(self, stamp: int, method: str, target: str) -> str:
        message = f"{stamp} {method} {target}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, method: str, target: str) -> str:
        """The header value for a request forwarded now."""
        stamp = int(self._clock.now().timestamp())
        return f"{stamp}.{self._signature(stamp, method, target)}"

    def verified(self, scope: Scope) -> bool:
        """Whether the request was forwarded by another node (a fresh, valid signature)."""
        value = next((v for k, v in scope.get("headers", ()) if k == _FORWARDED_KEY), None)
        if value is None:
            return False
        stamp_text, _, signature = value.decode("latin-1").partition(".")
        if not stamp_text.isdigit():
            return False
        stamp = int(stamp_text)
        if abs(self._clock.now().timestamp() - stamp) > MAX_AGE_SECONDS:
            return False
        expected = self._signature(stamp, scope["method"], _target(scope))
        return hmac.compare_digest(expected, signature)

    async def forward(self, request: Request, node: str) -> Response:
        """Send ``request`` to ``node`` and return its answer.

        Raises:
            APIError: 503 when the node cannot be reached or does not answer in time.
        """
        return await self.forward_scope(request.scope, await request.body(), node)

    async def forward_scope(self, scope: Scope, body: bytes, node: str) -> Response:
        """Send the request of ``scope`` (whose body was ``body``) to ``node``; its answer.

        Raises:
            APIError: 503 when the node cannot be reached or does not answer in time.
        """
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.decode("latin-1") in _PASSED
        }
        return await self._send(scope["method"], _target(scope), body, headers, node)

    async def post_for(self, connection: HTTPConnection, target: str, body: bytes, node: str) -> Response:
        """POST ``body`` (JSON) to ``target`` on ``node`` with the credentials of
        ``connection``: how a WebSocket's messages are passed on one by one.

        Raises:
            APIError: 503 when the node cannot be reached or does not answer in time.
        """
        headers = {name: value for name, value in connection.headers.items() if name in _PASSED}
        token = connection.query_params.get("access_token")  # browsers' WebSockets cannot set headers
        if token and "authorization" not in headers and "x-api-key" not in headers:
            headers["authorization"] = f"Bearer {token}"
        headers["content-type"] = "application/json"
        return await self._send("POST", target, body, headers, node)

    async def _send(self, method: str, target: str, body: bytes, headers: dict[str, str], node: str) -> Response:
        session, base = self._client(node)
        headers[FORWARDED_HEADER] = self.sign(method, target)
        try:
            async with session.request(method, base + target, data=body, headers=headers) as answer:
                content = await answer.read()
                passed = {name: value for name, value in answer.headers.items() if name.lower() in _RETURNED}
                return Response(content, status_code=answer.status, headers=passed)
        except (aiohttp.ClientError, TimeoutError):
            raise APIError.unavailable("The node that holds this session cannot be reached; retry shortly") from None
