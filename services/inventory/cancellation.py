"""What happens to one ``OrderCancelled`` event: give back what the order's reservation took.

Kafka orders nothing between ``order.created`` and ``order.cancelled``, so the two events of
one order may arrive either way round (a lagging partition, a replay, a rebalance). The
reservation document is the order's state here, and its ``version`` (the ``aggregateVersion`` last
applied) decides what an event may still change:

* cancel after a ``reserved`` reservation: the stock goes back, the reservation becomes
  ``cancelled`` and ``StockReleased`` (version 2 of the reservation) goes into inventory's
  outbox, in one transaction;
* cancel after a ``rejected`` one: it becomes ``cancelled`` (nothing was taken);
* cancel before any reservation: a ``cancelled`` record with no stock taken is written, so the
  creation that follows (version 1, below the record's) reserves nothing and announces no
  verdict (the order is cancelled already);
* a replayed cancel (version not above the record's) changes nothing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from services.inventory.announcements import Announcer
from services.inventory.models import (
    RESERVATIONS,
    STOCK,
    ReservationStatus,
    early_cancellation_document,
)
from shared.events import OrderCancelled
from shared.outbox import FIRST_VERSION, utc_now_ms

OUTCOME_RELEASED = "released"
OUTCOME_CANCELLED = "cancelled"
OUTCOME_CANCEL_RECORDED = "cancel_recorded"
OUTCOME_STALE = "stale"


class StockMissingError(Exception):
    """A SKU whose stock was reserved has no stock document any more (someone deleted it):
    retried as an unknown fault, then the DLQ, rather than losing the release silently."""


def _reserved_quantities(reservation: dict[str, Any]) -> Counter[str]:
    taken = Counter[str]()
    for item in reservation.get("items", []):
        taken[str(item["sku"])] += int(item["quantity"])
    return taken


async def apply_cancellation(
    db: AsyncDatabase[dict[str, Any]],
    session: AsyncClientSession,
    event: OrderCancelled,
    event_id: str,
    version: int,
    announce: Announcer,
) -> str:
    """Apply one cancel inside the caller's transaction; returns the outcome label."""
    reservations = db[RESERVATIONS]
    now = utc_now_ms()
    current = await reservations.find_one({"orderId": event.order_id}, session=session)
    if current is None:
        await reservations.insert_one(
            early_cancellation_document(event, event_id, version, now), session=session
        )
        return OUTCOME_CANCEL_RECORDED
    if int(current.get("version", FIRST_VERSION)) >= version:
        return OUTCOME_STALE
    released = current["status"] == ReservationStatus.RESERVED.value
    if released:
        given_back = _reserved_quantities(current)
        for sku, quantity in given_back.items():
            result = await db[STOCK].update_one(
                {"sku": sku}, {"$inc": {"available": quantity}}, session=session
            )
            if result.matched_count != 1:
                raise StockMissingError(f"no stock document for {sku} to give back to")
        await announce.released(event.order_id, given_back, now, session)
    await reservations.update_one(
        {"_id": current["_id"]},
        {
            "$set": {
                "status": ReservationStatus.CANCELLED.value,
                "version": version,
                "cancelEventId": event_id,
                "cancelledAt": now,
            }
        },
        session=session,
    )
    return OUTCOME_RELEASED if released else OUTCOME_CANCELLED
