"""Two nodes of a shared broker (Redis, NATS): two broker instances on one server, the
way two gateway processes share it. What holds for both lives here; what is particular
to one broker is in test_broker_redis.py and test_broker_jetstream.py."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from sluicegate.clock import ManualClock
from sluicegate.engines.broker import broker_from_url
from tests.brokers import drop, fresh_url, two_nodes
from tests.unit.test_broker_contract import Collector, arrived, settle

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.engines.broker import Broker

Nodes = tuple["Broker", "Broker"]


@pytest.fixture(params=["redis", "nats"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    url = fresh_url(request.param)
    clock = ManualClock()
    try:
        async with two_nodes(
            lambda: broker_from_url(url, history_size=100, history_seconds=60, pending_limit=1000, clock=clock)
        ) as pair:
            yield pair
    finally:
        await drop(url)


async def test_a_message_published_on_one_node_reaches_subscribers_on_the_other(nodes: Nodes) -> None:
    a, b = nodes
    sub = await b.subscribe("room")
    sink = Collector()
    assert sub.start(sink)
    position = await a.publish("room", b"hello from a")
    await arrived(sink, 1)
    assert [(m.position, m.data) for m in sink.messages] == [(position, b"hello from a")]
    sub.close()


async def test_a_subscriber_moving_to_another_node_resumes_with_exactly_the_rest(nodes: Nodes) -> None:
    a, b = nodes
    on_a = await a.subscribe("room")
    seen = Collector()
    assert on_a.start(seen)
    first = [await a.publish("room", f"m{i}".encode()) for i in range(3)]
    await arrived(seen, 3)
    on_a.close()  # the client disconnects from A ...
    missed = [await b.publish("room", f"n{i}".encode()) for i in range(2)] + [await a.publish("room", b"n2")]
    resumed = await b.subscribe("room", after=seen.messages[-1].position)  # ... and reconnects to B
    assert resumed.gap is None
    assert [m.position for m in resumed.backlog] == missed
    later = Collector()
    assert resumed.start(later)
    live = await a.publish("room", b"live")
    await arrived(later, 1)
    await settle(a)
    assert [m.position for m in later.messages] == [live]
    assert len({*first, *missed, live}) == 7
    resumed.close()


async def test_concurrent_publishers_on_two_nodes_keep_an_unbroken_chain(nodes: Nodes) -> None:
    a, b = nodes
    positions = await asyncio.gather(*(node.publish("busy", f"{i}".encode()) for i in range(40) for node in (a, b)))
    page = await a.history("busy", limit=100)
    assert sorted(m.position for m in page.messages) == sorted(positions)
    for i, message in enumerate(page.messages):  # resuming after any of them: exactly the rest, no gap
        rest = await b.history("busy", after=message.position, limit=100)
        assert rest.gap is None
        assert [m.position for m in rest.messages] == [m.position for m in page.messages[i + 1 :]]
