"""Signatures of requests forwarded between nodes (services/forward.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sluicegate.clock import ManualClock
from sluicegate.services.forward import FORWARDED_HEADER, MAX_AGE_SECONDS, Forwarder


def scope(method: str, path: str, query: bytes = b"", signature: str | None = None) -> dict[str, Any]:
    headers = [(FORWARDED_HEADER.encode(), signature.encode())] if signature is not None else []
    return {"type": "http", "method": method, "path": path, "query_string": query, "headers": headers}


def forwarder(secret: bytes = b"shared by every node") -> tuple[Forwarder, ManualClock]:
    clock = ManualClock(start=datetime(2026, 11, 27, tzinfo=UTC))
    return Forwarder(secret, clock), clock


def test_a_forwarded_request_is_recognised_by_another_node_with_the_same_secret() -> None:
    node_b, _ = forwarder()
    node_a, _ = forwarder()
    signature = node_b.sign("POST", "/api/streaming/sessions/s1/upload?x=1")
    assert node_a.verified(scope("POST", "/api/streaming/sessions/s1/upload", b"x=1", signature))


def test_a_signature_is_for_one_method_and_target_only() -> None:
    node, _ = forwarder()
    signature = node.sign("POST", "/api/streaming/sessions/s1/upload")
    assert not node.verified(scope("POST", "/api/streaming/sessions/s2/upload", signature=signature))
    assert not node.verified(scope("GET", "/api/streaming/sessions/s1/upload", signature=signature))
    assert not node.verified(scope("POST", "/api/streaming/sessions/s1/upload", b"more=1", signature))


async def test_a_signature_expires_after_a_minute() -> None:
    node, clock = forwarder()
    signature = node.sign("GET", "/api/streaming/dlq")
    await clock.advance(MAX_AGE_SECONDS)
    assert node.verified(scope("GET", "/api/streaming/dlq", signature=signature))
    await clock.advance(1)
    assert not node.verified(scope("GET", "/api/streaming/dlq", signature=signature))


def test_a_client_cannot_forge_or_omit_it() -> None:
    node, _ = forwarder()
    other, _ = forwarder(b"not the nodes' secret")
    target = "/api/streaming/dlq"
    assert not node.verified(scope("GET", target))
    assert not node.verified(scope("GET", target, signature="garbage"))
    assert not node.verified(scope("GET", target, signature="123.abc"))
    assert not node.verified(scope("GET", target, signature=other.sign("GET", target)))
