"""MongoDB documents of the inventory service (database ``inventory``).

* ``stock``: ``{sku (unique), available: int}``.
* ``reservations``: ``{orderId (unique), eventId, items, status, reason, version, createdAt}``
  (plus ``cancelEventId``, ``cancelledAt`` once cancelled). The unique ``orderId`` is the
  exactly-once guarantee: Redis is the fast path, this index the backstop. ``version`` is the
  order's ``aggregateVersion`` last applied: an event at or below it changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from bson.decimal128 import Decimal128
from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, IndexModel

from shared.events import OrderCancelled, OrderCreated
from shared.identifiers import Identifier
from shared.mongo import MongoClient
from shared.outbox import FIRST_VERSION

STOCK: Final = "stock"
RESERVATIONS: Final = "reservations"


class ReservationStatus(StrEnum):
    RESERVED = "reserved"
    REJECTED = "rejected"
    # Stock given back (if any was taken); also the record of a cancel seen before its order.
    CANCELLED = "cancelled"


class StockLevel(BaseModel):
    """One line of a seed-stock file, and one ``stock`` document."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    # The order API's identifier rule, NFC included: the stock must be found under the SKU an
    # order carries, however the seed file spelt its accents.
    sku: Identifier = Field(min_length=1, max_length=200)
    available: int = Field(ge=0)


STOCK_INDEXES = [IndexModel([("sku", ASCENDING)], unique=True, name="sku_unique")]
RESERVATION_INDEXES = [IndexModel([("orderId", ASCENDING)], unique=True, name="orderId_unique")]


async def ensure_indexes(client: MongoClient, database: str) -> None:
    """Create the unique indexes (idempotent). Must run before any reservation is written."""
    db = client[database]
    await db[STOCK].create_indexes(STOCK_INDEXES)
    await db[RESERVATIONS].create_indexes(RESERVATION_INDEXES)


def reservation_document(
    event: OrderCreated,
    event_id: str,
    status: ReservationStatus,
    reason: str | None,
    created_at: datetime,
) -> dict[str, Any]:
    return {
        "orderId": event.order_id,
        "eventId": event_id,
        "items": [
            {"sku": item.sku, "quantity": item.quantity, "unitPrice": Decimal128(item.unit_price)}
            for item in event.items
        ],
        "status": status.value,
        "reason": reason,
        "version": FIRST_VERSION,
        "createdAt": created_at,
    }


def early_cancellation_document(
    event: OrderCancelled, event_id: str, version: int, now: datetime
) -> dict[str, Any]:
    """The record of a cancel that arrived before its order's creation: no stock taken, and the
    creation that follows finds it and reserves nothing."""
    return {
        "orderId": event.order_id,
        "eventId": None,
        "items": [],
        "status": ReservationStatus.CANCELLED.value,
        "reason": "cancelled before its creation was seen",
        "version": version,
        "createdAt": now,
        "cancelEventId": event_id,
        "cancelledAt": now,
    }
