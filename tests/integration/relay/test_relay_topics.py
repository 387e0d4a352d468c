"""One topic per event type: the relay publishes an order's OrderCreated to ``order.created`` and
its OrderCancelled to ``order.cancelled``, and never sends the later version first."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from bson import ObjectId

from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    ORDER_CANCELLED_TOPIC,
    ORDER_CREATED_TOPIC,
    TOPIC_PARTITIONS,
    Header,
)
from shared.events import OrderCancelled
from shared.kafka import decode_headers
from tests.integration.relay.relay_world import RelayWorld, running_relay
from tests.waiting import wait_until

TOPICS = (ORDER_CREATED_TOPIC, ORDER_CANCELLED_TOPIC)


async def _ends(bootstrap: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in TOPICS for p in range(TOPIC_PARTITIONS)]
        consumer.assign(tps)
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def _read(
    bootstrap: str, start: dict[TopicPartition, int], keys: set[str], count: int
) -> list[Any]:
    """The records of ``keys`` on both topics since ``start``: wait for ``count`` of them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)

        async def enough() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            records.extend(
                m for ms in batch.values() for m in ms if m.key and m.key.decode() in keys
            )
            return len(records) >= count

        await wait_until(enough, timeout=30, interval=0.01, message=f"{count} records")
    finally:
        await consumer.stop()
    return records


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
    start = await _ends(bootstrap)
    aggregates = [str(ObjectId()) for _ in range(6)]
    # Both versions pending before the relay starts: they go out in one batch, v1 first.
    for aggregate in aggregates:
        await world.insert(aggregate, 1)
        await world.outbox.insert_one(_cancel_doc(world, aggregate))

    async with running_relay(world.settings()):
        records = await _read(bootstrap, start, set(aggregates), 2 * len(aggregates))

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
