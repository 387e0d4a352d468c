"""The end-to-end bench closes the loop only when the order's status took inventory's verdict:
it reads when the step that made it ``confirmed`` or ``rejected`` happened, and an order still
``placed`` (or cancelled) is not decided."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from bson import ObjectId

from bench.e2e_latency import VerdictReader
from services.order.lifecycle import CAUSE_CANCEL, history_entry
from services.order.models import ORDERS_COLLECTION
from services.order.schemas import OrderStatus
from shared.contracts import EVENT_STOCK_REJECTED, EVENT_STOCK_RELEASED, EVENT_STOCK_RESERVED
from shared.mongo import make_mongo_client
from stack import Stack

PLACED_AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _order(status: OrderStatus, *history: dict[str, object]) -> dict[str, object]:
    return {
        "_id": ObjectId(),
        "status": status.value,
        "createdAt": PLACED_AT,
        "history": list(history),
    }


async def test_an_orders_verdict_is_when_its_status_took_it(stack: Stack) -> None:
    client = make_mongo_client(stack.config.mongo_uri, 30.0, "test-verdict-reader")
    database = f"test_verdicts_{uuid.uuid4().hex[:8]}"
    confirmed_at = PLACED_AT + timedelta(milliseconds=40)
    rejected_at = PLACED_AT + timedelta(milliseconds=55)
    confirmed = _order(
        OrderStatus.CONFIRMED,
        history_entry(OrderStatus.CONFIRMED, confirmed_at, EVENT_STOCK_RESERVED, event_id="r1"),
    )
    rejected = _order(
        OrderStatus.REJECTED,
        history_entry(OrderStatus.REJECTED, rejected_at, EVENT_STOCK_REJECTED, event_id="r2"),
    )
    placed = _order(OrderStatus.PLACED)
    # Cancelled after its confirmation: not a verdict the order is waiting for any more.
    cancelled = _order(
        OrderStatus.CANCELLED,
        history_entry(OrderStatus.CONFIRMED, confirmed_at, EVENT_STOCK_RESERVED, event_id="r3"),
        history_entry(OrderStatus.CANCELLED, rejected_at, CAUSE_CANCEL),
        history_entry(OrderStatus.CANCELLED, rejected_at, EVENT_STOCK_RELEASED, event_id="r4"),
    )
    reader = VerdictReader(stack.config.mongo_uri, database)
    try:
        await client[database][ORDERS_COLLECTION].insert_many(
            [confirmed, rejected, placed, cancelled]
        )
        ids = [str(o["_id"]) for o in (confirmed, rejected, placed, cancelled)]

        await reader.read(ids)

        assert reader.decided == {
            ids[0]: confirmed_at.timestamp(),
            ids[1]: rejected_at.timestamp(),
        }
    finally:
        await reader.close()
        await client.drop_database(database)
        await client.close()
