"""One topic per event type: the relay publishes an order's OrderCreated to ``order.created`` and
its OrderCancelled to ``order.cancelled``, and never sends the later version first."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bson import ObjectId

from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    ORDER_CANCELLED_TOPIC,
    ORDER_CREATED_TOPIC,
    Header,
)
from shared.events import OrderCancelled
from shared.kafka import decode_headers
from tests.integration.relay.relay_world import (
    RelayWorld,
    end_offsets,
    read_keyed,
    running_relay,
)

TOPICS = (ORDER_CREATED_TOPIC, ORDER_CANCELLED_TOPIC)


def _cancel_doc(world: RelayWorld, aggregate_id: str) -> dict[str, Any]:
    payload = OrderCancelled(
        order_id=aggregate_id,
        user_id="user-1",
        customer_email="buyer@example.com",
        total=Decimal("25.00"),
        cancelled_at=datetime.now(UTC),
    ).to_json()
    doc = world.event_doc(ObjectId(), aggregate_id, 2, payload)
    doc["eventType"] = EVENT_ORDER_CANCELLED
    return doc


async def test_created_and_cancelled_go_to_their_own_topics_v1_never_after_v2(
    world: RelayWorld,
) -> None:
    bootstrap = world.stack.config.kafka_bootstrap
    start = await end_offsets(bootstrap, TOPICS)
    aggregates = [str(ObjectId()) for _ in range(6)]
    # Both versions pending before the relay starts: they go out in one batch, v1 first.
    for aggregate in aggregates:
        await world.insert(aggregate, 1)
        await world.outbox.insert_one(_cancel_doc(world, aggregate))

    async with running_relay(world.settings()):
        records = await read_keyed(bootstrap, start, set(aggregates), 2 * len(aggregates))

    by_aggregate: dict[str, dict[int, Any]] = {}
    for record in records:
        headers = decode_headers(record.headers)
        version = int(headers[Header.AGGREGATE_VERSION])
        expected = {1: (ORDER_CREATED_TOPIC, EVENT_ORDER_CREATED)}.get(
            version, (ORDER_CANCELLED_TOPIC, EVENT_ORDER_CANCELLED)
        )
        assert (record.topic, headers[Header.EVENT_TYPE]) == expected
        assert headers[Header.AGGREGATE_ID] == record.key.decode()
        by_aggregate.setdefault(record.key.decode(), {}).setdefault(version, record)
    assert set(by_aggregate) == set(aggregates)
    for aggregate, versions in by_aggregate.items():
        assert set(versions) == {1, 2}, aggregate
        # One key, one partition number on both topics (same key hash, same partition count).
        assert versions[1].partition == versions[2].partition
        assert versions[2].timestamp >= versions[1].timestamp
