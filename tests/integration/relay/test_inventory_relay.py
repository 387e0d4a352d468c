"""The relay configured for inventory's database publishes inventory's verdicts as it publishes
the order's events: to their own topics (``inventory.reserved|rejected|released``), keyed by the
order id, with the same headers, in version order, each marked Published with where Kafka put
it. The relay of the order outbox, running beside it, never touches them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from bson import ObjectId

from services.inventory.handlers import ReservationHandler
from services.inventory.models import STOCK, ensure_indexes
from shared.consumer import Delivery
from shared.contracts import (
    AGGREGATE_RESERVATION,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
    INVENTORY_REJECTED_TOPIC,
    INVENTORY_RELEASED_TOPIC,
    INVENTORY_RESERVED_TOPIC,
    INVENTORY_TOPICS,
    Header,
    OutboxStatus,
)
from shared.events import OrderCreated
from shared.kafka import decode_headers
from shared.outbox import (
    DEFAULT_PUBLISHED_TTL_SECONDS,
    OUTBOX_COLLECTION,
    OutboxField,
    ensure_outbox_indexes,
)
from tests.integration.relay.relay_world import (
    RelayWorld,
    end_offsets,
    read_keyed,
    running_relay,
)
from tests.order_events import cancel_event
from tests.waiting import wait_until

TIMEOUT = 60.0
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
async def orders_database(world: RelayWorld) -> AsyncIterator[str]:
    """A second outbox (the order API's, in this test) beside the world's inventory one."""
    name = f"{world.database}_orders"
    await world.mongo[name].create_collection(OUTBOX_COLLECTION)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            await world.mongo.drop_database(name)


def _order(sku: str, quantity: int) -> OrderCreated:
    return OrderCreated.model_validate(
        {
            "orderId": f"ord-{uuid.uuid4().hex[:12]}",
            "userId": "user-1",
            "customerEmail": "buyer@example.com",
            "total": "2.00",
            "items": [{"sku": sku, "quantity": quantity, "unitPrice": "2.00"}],
            "createdAt": datetime.now(UTC),
        }
    )


def _delivery(version: int) -> Delivery:
    headers = {Header.AGGREGATE_VERSION: str(version), Header.TRACEPARENT: TRACEPARENT}
    return Delivery("t", 0, 0, None, headers, uuid.uuid4().hex)


async def test_the_inventory_relay_publishes_the_verdicts_and_the_order_relay_leaves_them(
    world: RelayWorld, orders_database: str
) -> None:
    inventory = world.database
    outbox = world.mongo[inventory][OUTBOX_COLLECTION]
    await ensure_indexes(world.mongo, inventory)
    await ensure_outbox_indexes(outbox, DEFAULT_PUBLISHED_TTL_SECONDS)
    await world.mongo[inventory][STOCK].insert_one({"sku": "SKU-1", "available": 5})
    start = await end_offsets(world.stack.config.kafka_bootstrap, INVENTORY_TOPICS)

    # Inventory's own transactions write the events: a reservation then its release, and a
    # rejection.
    handler = ReservationHandler(world.mongo, inventory, world.slots)
    kept, cancelled, refused = _order("SKU-1", 1), _order("SKU-1", 2), _order("SKU-1", 9)
    for order in (kept, cancelled, refused):
        await handler.handle(order, _delivery(1))
    assert await handler.handle(cancel_event(cancelled), _delivery(2)) == "released"
    documents = {
        (d[OutboxField.AGGREGATE_ID], d[OutboxField.AGGREGATE_VERSION]): d
        async for d in outbox.find({})
    }
    assert len(documents) == 4

    # The order outbox's relay publishes its own event and nothing of inventory's.
    orders_outbox = world.mongo[orders_database][OUTBOX_COLLECTION]
    order_event = world.event_doc(ObjectId(), kept.order_id, 1)
    await orders_outbox.insert_one(order_event)
    order_relay = world.settings(
        database=orders_database, transactional_id=f"{world.transactional_id}-orders"
    )
    async with running_relay(order_relay):

        async def order_event_published() -> bool:
            doc = await orders_outbox.find_one({"_id": order_event["_id"]})
            return bool(doc and doc[OutboxField.STATUS] == OutboxStatus.PUBLISHED.value)

        await wait_until(order_event_published, timeout=TIMEOUT, message="the order's event")
        untouched = [
            d
            async for d in outbox.find({})
            if d[OutboxField.STATUS] == OutboxStatus.PENDING.value
            and d[OutboxField.ATTEMPTS] == 0
            and OutboxField.RELAY_EPOCH not in d
        ]
        assert len(untouched) == 4

        # The inventory database's relay, beside it, with a transactional id of its own.
        async with running_relay(world.settings(database=inventory)):
            await world.wait_published([d["_id"] for d in documents.values()], within=TIMEOUT)

    keys = {kept.order_id, cancelled.order_id, refused.order_id}
    records = await read_keyed(world.stack.config.kafka_bootstrap, start, keys, 4, TIMEOUT)
    assert len(records) == 4, records
    topic_of = {
        EVENT_STOCK_RESERVED: INVENTORY_RESERVED_TOPIC,
        EVENT_STOCK_REJECTED: INVENTORY_REJECTED_TOPIC,
        EVENT_STOCK_RELEASED: INVENTORY_RELEASED_TOPIC,
    }
    for record in records:
        h, key = decode_headers(record.headers), record.key.decode()
        doc = documents[(key, int(h[Header.AGGREGATE_VERSION]))]
        assert record.topic == topic_of[doc[OutboxField.EVENT_TYPE]]
        assert record.value.decode() == doc[OutboxField.PAYLOAD]
        assert (
            h[Header.IDEMPOTENCY_KEY],
            h[Header.EVENT_TYPE],
            h[Header.AGGREGATE_TYPE],
            h[Header.AGGREGATE_ID],
            h[Header.TRACEPARENT],
        ) == (
            str(doc["_id"]),
            doc[OutboxField.EVENT_TYPE],
            AGGREGATE_RESERVATION,
            key,
            TRACEPARENT,
        )
        assert {Header.OCCURRED_AT, Header.RELAY_SLOT, Header.RELAY_EPOCH} <= set(h)
        published = await outbox.find_one({"_id": doc["_id"]})
        assert published is not None
        assert (
            published[OutboxField.KAFKA_TOPIC],
            published[OutboxField.KAFKA_PARTITION],
            published[OutboxField.KAFKA_OFFSET],
        ) == (record.topic, record.partition, record.offset)

    # One order's reservation and release: its key, so its partition number on both topics, and
    # the release published only after the reservation.
    reserved = await outbox.find_one({"_id": documents[(cancelled.order_id, 1)]["_id"]})
    released = await outbox.find_one({"_id": documents[(cancelled.order_id, 2)]["_id"]})
    assert reserved is not None and released is not None
    assert reserved[OutboxField.KAFKA_PARTITION] == released[OutboxField.KAFKA_PARTITION]
    assert reserved[OutboxField.PUBLISHED_AT] <= released[OutboxField.PUBLISHED_AT]
    refusals = {r.topic for r in records if r.key.decode() == refused.order_id}
    assert refusals == {INVENTORY_REJECTED_TOPIC}
