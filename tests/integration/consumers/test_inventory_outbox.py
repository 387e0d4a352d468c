"""Inventory announces its verdict through its own outbox: the reservation (or its release) and
the event that says so are written in one transaction against the embedded MongoDB, once per
order however often the order event is delivered.

``failCommand`` is armed only for this test's own client (its ``appName``), so the failpoint
cannot hit another client of the shared test server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from services.inventory.handlers import OUTCOME_ALREADY_RESERVED, ReservationHandler
from services.inventory.models import RESERVATIONS, STOCK, ensure_indexes
from shared.consumer import Delivery
from shared.contracts import (
    AGGREGATE_RESERVATION,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
    Header,
    OutboxStatus,
)
from shared.events import (
    OrderCreated,
    parse_stock_rejected,
    parse_stock_released,
    parse_stock_reserved,
)
from shared.outbox import (
    DEFAULT_PUBLISHED_TTL_SECONDS,
    OUTBOX_COLLECTION,
    OutboxField,
    ensure_outbox_indexes,
)
from shared.slots import slot_for
from stack import Stack
from tests.order_events import cancel_event

APP_NAME = "inventory-outbox-test"
SLOTS = 8
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class World:
    client: AsyncMongoClient[Any]
    database: str
    handler: ReservationHandler

    @property
    def db(self) -> Any:
        return self.client[self.database]

    async def outbox(self, order_id: str) -> list[dict[str, Any]]:
        cursor = self.db[OUTBOX_COLLECTION].find(
            {OutboxField.AGGREGATE_ID: order_id}, sort=[(OutboxField.AGGREGATE_VERSION, 1)]
        )
        return [doc async for doc in cursor]

    async def reservations(self, order_id: str) -> list[dict[str, Any]]:
        return [doc async for doc in self.db[RESERVATIONS].find({"orderId": order_id})]

    async def available(self, sku: str) -> int:
        doc = await self.db[STOCK].find_one({"sku": sku})
        assert doc is not None
        return int(doc["available"])

    async def fail_inserts_after(self, skipped: int) -> None:
        """Fail every ``insert`` of this client after the first ``skipped`` (UnknownError, not
        transient): the write that fails is the one the test names by its position."""
        await self.client.admin.command(
            {
                "configureFailPoint": "failCommand",
                "mode": {"skip": skipped},
                "data": {"failCommands": ["insert"], "appName": APP_NAME, "errorCode": 8},
            }
        )

    async def stop_failing(self) -> None:
        await self.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


@pytest.fixture
async def world(stack: Stack) -> AsyncIterator[World]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        stack.config.mongo_uri, tz_aware=True, w="majority", timeoutMS=30_000, appname=APP_NAME
    )
    database = f"test_inv_outbox_{uuid.uuid4().hex[:8]}"
    await ensure_indexes(client, database)
    await ensure_outbox_indexes(client[database][OUTBOX_COLLECTION], DEFAULT_PUBLISHED_TTL_SECONDS)
    await client[database][STOCK].insert_many(
        [{"sku": "SKU-A", "available": 10}, {"sku": "SKU-B", "available": 1}]
    )
    world = World(client, database, ReservationHandler(client, database, SLOTS))
    try:
        yield world
    finally:
        await world.stop_failing()
        await client.drop_database(database)
        await client.close()


def _order(items: list[tuple[str, int]]) -> OrderCreated:
    return OrderCreated.model_validate(
        {
            "orderId": f"ord-{uuid.uuid4().hex[:12]}",
            "userId": "user-1",
            "customerEmail": "buyer@example.com",
            "total": str(sum(Decimal("0.50") * q for _, q in items)),
            "items": [{"sku": s, "quantity": q, "unitPrice": "0.50"} for s, q in items],
            "createdAt": datetime.now(UTC),
        }
    )


def _delivery(version: int = 1) -> Delivery:
    return Delivery(
        topic="t",
        partition=0,
        offset=0,
        key=None,
        headers={Header.AGGREGATE_VERSION: str(version), Header.TRACEPARENT: TRACEPARENT},
        event_id=uuid.uuid4().hex,
    )


def _assert_announced(doc: dict[str, Any], order_id: str, version: int, event_type: str) -> None:
    f = OutboxField
    assert (
        doc[f.AGGREGATE_TYPE],
        doc[f.AGGREGATE_ID],
        doc[f.AGGREGATE_VERSION],
        doc[f.EVENT_TYPE],
        doc[f.STATUS],
        doc[f.ATTEMPTS],
        doc[f.SLOT],
        doc[f.TRACEPARENT],
    ) == (
        AGGREGATE_RESERVATION,
        order_id,
        version,
        event_type,
        OutboxStatus.PENDING.value,
        0,
        slot_for(order_id, SLOTS),
        TRACEPARENT,
    )
    assert doc[f.CREATED_AT].tzinfo is not None


@pytest.mark.parametrize(
    ("items", "inserts_before_the_outbox", "event_type"),
    [
        # The short path: reservation insert, conditional $inc, outbox insert, commit.
        ([("SKU-A", 2), ("SKU-B", 1)], 1, EVENT_STOCK_RESERVED),
        # The read path, after the short path's reservation insert aborted on SKU-B's shortfall:
        # reads, reservation insert, outbox insert, commit.
        ([("SKU-A", 2), ("SKU-B", 5)], 2, EVENT_STOCK_REJECTED),
    ],
    ids=["reserved", "rejected"],
)
async def test_the_verdict_and_its_outbox_event_commit_together_or_not_at_all(
    world: World, items: list[tuple[str, int]], inserts_before_the_outbox: int, event_type: str
) -> None:
    order = _order(items)
    # The outbox insert fails: the reservation and the stock taken before it roll back with it.
    await world.fail_inserts_after(inserts_before_the_outbox)
    try:
        with pytest.raises(OperationFailure):
            await world.handler.handle(order, _delivery())
    finally:
        await world.stop_failing()

    assert await world.reservations(order.order_id) == []
    assert await world.outbox(order.order_id) == []
    assert (await world.available("SKU-A"), await world.available("SKU-B")) == (10, 1)

    # The consumer's retry: both are written, once.
    status = "reserved" if event_type == EVENT_STOCK_RESERVED else "rejected"
    assert await world.handler.handle(order, _delivery()) == status
    [reservation] = await world.reservations(order.order_id)
    [event] = await world.outbox(order.order_id)
    assert reservation["status"] == status
    _assert_announced(event, order.order_id, 1, event_type)


async def test_a_reservation_announces_stock_reserved_with_what_the_confirmation_needs(
    world: World,
) -> None:
    order = _order([("SKU-A", 2), ("SKU-A", 1), ("SKU-B", 1)])
    assert await world.handler.handle(order, _delivery()) == "reserved"

    [doc] = await world.outbox(order.order_id)
    _assert_announced(doc, order.order_id, 1, EVENT_STOCK_RESERVED)
    reserved = parse_stock_reserved(doc[OutboxField.PAYLOAD].encode())
    assert (reserved.order_id, reserved.customer_email, reserved.total, reserved.items) == (
        order.order_id,
        order.customer_email,
        order.total,
        order.items,
    )
    assert reserved.reserved_at == doc[OutboxField.CREATED_AT]


async def test_a_shortfall_announces_stock_rejected_with_the_reason_and_the_short_skus(
    world: World,
) -> None:
    # SKU-A has enough, SKU-B is short, SKU-X unknown: both are named, nothing is taken.
    order = _order([("SKU-A", 2), ("SKU-B", 5), ("SKU-X", 1)])
    assert await world.handler.handle(order, _delivery()) == "rejected"

    assert (await world.available("SKU-A"), await world.available("SKU-B")) == (10, 1)
    [reservation] = await world.reservations(order.order_id)
    [doc] = await world.outbox(order.order_id)
    _assert_announced(doc, order.order_id, 1, EVENT_STOCK_REJECTED)
    rejected = parse_stock_rejected(doc[OutboxField.PAYLOAD].encode())
    assert rejected.short_skus == ["SKU-B", "SKU-X"]
    assert rejected.reason == reservation["reason"]
    assert rejected.reason == (
        "unknown sku: SKU-X; insufficient stock: SKU-B (wanted 5, available 1)"
    )
    assert (rejected.customer_email, rejected.total, rejected.items) == (
        order.customer_email,
        order.total,
        order.items,
    )


async def test_cancelling_a_reserved_order_announces_stock_released_as_version_2(
    world: World,
) -> None:
    order = _order([("SKU-A", 2), ("SKU-A", 1), ("SKU-B", 1)])
    assert await world.handler.handle(order, _delivery()) == "reserved"

    assert await world.handler.handle(cancel_event(order), _delivery(version=2)) == "released"

    assert (await world.available("SKU-A"), await world.available("SKU-B")) == (10, 1)
    verdict, release = await world.outbox(order.order_id)
    _assert_announced(verdict, order.order_id, 1, EVENT_STOCK_RESERVED)
    _assert_announced(release, order.order_id, 2, EVENT_STOCK_RELEASED)
    released = parse_stock_released(release[OutboxField.PAYLOAD].encode())
    assert [(line.sku, line.quantity) for line in released.items] == [("SKU-A", 3), ("SKU-B", 1)]

    # A replayed cancel releases and announces nothing more.
    assert await world.handler.handle(cancel_event(order), _delivery(version=2)) == "stale"
    assert len(await world.outbox(order.order_id)) == 2


async def test_a_cancel_that_gives_nothing_back_announces_no_release(world: World) -> None:
    rejected = _order([("SKU-B", 5)])
    assert await world.handler.handle(rejected, _delivery()) == "rejected"
    assert await world.handler.handle(cancel_event(rejected), _delivery(version=2)) == "cancelled"
    assert [d[OutboxField.EVENT_TYPE] for d in await world.outbox(rejected.order_id)] == [
        EVENT_STOCK_REJECTED
    ]

    # Cancelled before inventory saw it: no verdict at all (the order is cancelled already).
    early = _order([("SKU-A", 1)])
    assert (
        await world.handler.handle(cancel_event(early), _delivery(version=2)) == "cancel_recorded"
    )
    assert await world.handler.handle(early, _delivery()) == OUTCOME_ALREADY_RESERVED
    assert await world.outbox(early.order_id) == []
    assert await world.available("SKU-A") == 10


async def test_a_redelivered_order_announces_its_verdict_once(world: World) -> None:
    order = _order([("SKU-A", 3)])
    assert await world.handler.handle(order, _delivery()) == "reserved"
    assert await world.handler.handle(order, _delivery()) == OUTCOME_ALREADY_RESERVED
    # Two deliveries at once (a rebalance): one commits, the other collides.
    racing = _order([("SKU-A", 1)])
    outcomes = await asyncio.gather(
        world.handler.handle(racing, _delivery()), world.handler.handle(racing, _delivery())
    )
    assert sorted(outcomes) == sorted([OUTCOME_ALREADY_RESERVED, "reserved"])

    for one in (order, racing):
        [doc] = await world.outbox(one.order_id)
        assert doc[OutboxField.EVENT_TYPE] == EVENT_STOCK_RESERVED
    assert await world.available("SKU-A") == 6
