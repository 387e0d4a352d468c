"""The inventory reservation against the embedded MongoDB: what it costs in round trips, and
that the short path keeps "all or none" and "once per order"."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from services.inventory.handlers import OUTCOME_ALREADY_RESERVED, ReservationHandler
from services.inventory.models import RESERVATIONS, STOCK, ensure_indexes
from shared.consumer import Delivery
from shared.events import OrderCreated
from stack import Stack
from tests.mongo_commands import CommandLog


@pytest.fixture
async def world(stack: Stack) -> AsyncIterator[tuple[AsyncMongoClient[Any], str, CommandLog]]:
    commands = CommandLog()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        stack.config.mongo_uri, tz_aware=True, w="majority", timeoutMS=30_000,
        event_listeners=[commands],
    )  # fmt: skip
    database = f"test_reserve_{uuid.uuid4().hex[:8]}"
    await ensure_indexes(client, database)
    await client[database][STOCK].insert_many(
        [{"sku": "SKU-A", "available": 10}, {"sku": "SKU-B", "available": 1}]
    )
    try:
        yield client, database, commands
    finally:
        await client.drop_database(database)
        await client.close()


def _event(order_id: str, items: list[tuple[str, int]]) -> OrderCreated:
    return OrderCreated.model_validate(
        {
            "orderId": order_id,
            "userId": "user-1",
            "customerEmail": "buyer@example.com",
            "total": "1.00",
            "items": [{"sku": s, "quantity": q, "unitPrice": "0.50"} for s, q in items],
            "createdAt": datetime.now(UTC),
        }
    )


def _delivery() -> Delivery:
    return Delivery(topic="t", partition=0, offset=0, key=None, headers={}, event_id="e1")


async def _available(client: AsyncMongoClient[Any], database: str, sku: str) -> int:
    doc = await client[database][STOCK].find_one({"sku": sku})
    assert doc is not None
    return int(doc["available"])


async def test_reserving_a_new_order_costs_two_inserts_one_update_for_all_skus_and_the_commit(
    world: tuple[AsyncMongoClient[Any], str, CommandLog],
) -> None:
    client, database, commands = world
    handler = ReservationHandler(client, database)
    commands.clear()
    assert await handler.handle(_event("o-1", [("SKU-A", 2), ("SKU-B", 1)]), _delivery()) == (
        "reserved"
    )
    # No read before the writes: the unique orderId index rejects a repeat and the conditional
    # $inc checks the stock, so the reads only cost round trips. Both SKUs' $inc travel in one
    # update command: a round trip per order, not per line. The second insert is the verdict
    # (StockReserved) into inventory's outbox, in the same transaction.
    assert commands.names == ["insert", "update", "insert", "commitTransaction"]
    assert await _available(client, database, "SKU-A") == 8
    assert await _available(client, database, "SKU-B") == 0


async def test_a_repeated_order_changes_no_stock_and_says_already_recorded(
    world: tuple[AsyncMongoClient[Any], str, CommandLog],
) -> None:
    client, database, _ = world
    handler = ReservationHandler(client, database)
    event = _event("o-2", [("SKU-A", 3)])
    assert await handler.handle(event, _delivery()) == "reserved"
    assert await handler.handle(event, _delivery()) == OUTCOME_ALREADY_RESERVED
    assert await _available(client, database, "SKU-A") == 7
    assert await client[database][RESERVATIONS].count_documents({"orderId": "o-2"}) == 1


async def test_a_shortfall_on_one_sku_reserves_none_and_records_the_reason(
    world: tuple[AsyncMongoClient[Any], str, CommandLog],
) -> None:
    client, database, _ = world
    handler = ReservationHandler(client, database)
    # SKU-A has enough, SKU-B does not: the $inc of SKU-A must be rolled back.
    assert await handler.handle(_event("o-3", [("SKU-A", 2), ("SKU-B", 5)]), _delivery()) == (
        "rejected"
    )
    assert await _available(client, database, "SKU-A") == 10
    assert await _available(client, database, "SKU-B") == 1
    doc = await client[database][RESERVATIONS].find_one({"orderId": "o-3"})
    assert doc is not None and "insufficient stock: SKU-B" in doc["reason"]
    assert await handler.handle(_event("o-4", [("SKU-X", 1)]), _delivery()) == "rejected"
    doc = await client[database][RESERVATIONS].find_one({"orderId": "o-4"})
    assert doc is not None and doc["reason"] == "unknown sku: SKU-X"
