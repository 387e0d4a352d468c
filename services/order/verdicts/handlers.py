"""What one verdict of inventory does to its order (:mod:`services.order.lifecycle`).

One conditional update per verdict: the status it read and "this event is not in the history
yet" are in the filter, the new status (if any) and the history entry in the same ``$set`` and
``$push``. A single-document update is atomic in MongoDB, so the order and its history move
together without a multi-document transaction, and there is no outbox event to write with them:
a verdict announces nothing (inventory's own event already told everyone who listens).

* A cancel that commits between our read and our write makes the filter miss: we read again and
  decide on ``cancelled`` (the verdict is then recorded, the status stays).
* A verdict committing first makes the cancel's transaction conflict: it runs again and cancels
  the ``confirmed`` order (see :mod:`services.order.cancel`).
* A second delivery of the same event finds its id in the history and changes nothing, even when
  Redis has lost the dedup key.
* A verdict for an order that does not exist is a poison message: the order commits before its
  ``OrderCreated`` is published, so inventory can never answer an order we have not stored.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from pymongo.asynchronous.collection import AsyncCollection

from services.order.lifecycle import VERDICT_OF_EVENT_TYPE, decide_verdict, history_entry, status_of
from services.order.models import ORDERS_COLLECTION
from shared.consumer import Delivery
from shared.contracts import EVENT_STOCK_REJECTED, EVENT_STOCK_RELEASED, EVENT_STOCK_RESERVED
from shared.errors import PoisonMessage
from shared.events import InventoryEvent, StockRejected, StockReleased, StockReserved
from shared.identifiers import parse_object_id
from shared.mongo import MongoClient
from shared.outbox import utc_now_ms

log = logging.getLogger(__name__)

OUTCOME_ALREADY_RECORDED: Final = "already_recorded"
OUTCOME_RECORDED: Final = "recorded"  # in the history only: the status did not change

_EVENT_TYPE_OF: Final[dict[type[InventoryEvent], str]] = {
    StockReserved: EVENT_STOCK_RESERVED,
    StockRejected: EVENT_STOCK_REJECTED,
    StockReleased: EVENT_STOCK_RELEASED,
}
# Each miss of the conditional update means another writer changed the order in between; an
# order has at most one cancel and a verdict or two, so more misses than this is not a race.
_MAX_RACE_ROUNDS: Final = 5


class OrderKeptChanging(Exception):
    """The conditional update missed every round (not a race: a bug or a foreign writer).
    Neither poison nor infrastructure: the engine retries it, then dead-letters it."""


class VerdictHandler:
    def __init__(self, client: MongoClient, database: str) -> None:
        self._orders: AsyncCollection[dict[str, Any]] = client[database][ORDERS_COLLECTION]
        self._database = database

    async def handle(self, event: InventoryEvent, delivery: Delivery) -> str:
        """Apply one verdict (or release) to its order; returns the outcome label."""
        event_type = _EVENT_TYPE_OF[type(event)]
        oid = parse_object_id(event.order_id)
        if oid is None:
            raise PoisonMessage(f"orderId {event.order_id!r} is not an order id")
        reason = event.reason if isinstance(event, StockRejected) else None
        extra = {"order_id": event.order_id, "event_id": delivery.event_id}
        for _ in range(_MAX_RACE_ROUNDS):
            order = await self._orders.find_one(
                {"_id": oid}, projection={"status": 1, "history.eventId": 1}
            )
            if order is None:
                raise PoisonMessage(
                    f"{event_type} for order {event.order_id}, which is not in database "
                    f"{self._database!r} (an order is stored before inventory can see it, so "
                    "this is not a race)"
                )
            if any(h.get("eventId") == delivery.event_id for h in order.get("history", [])):
                return OUTCOME_ALREADY_RECORDED
            stored = order["status"]
            step = decide_verdict(status_of(stored), VERDICT_OF_EVENT_TYPE[event_type], reason)
            entry = history_entry(
                step.status, utc_now_ms(), event_type, event_id=delivery.event_id, note=step.note
            )
            update: dict[str, Any] = {"$push": {"history": entry}}
            if step.changed:
                update["$set"] = {"status": step.status.value}
            result = await self._orders.update_one(
                {"_id": oid, "status": stored, "history.eventId": {"$ne": delivery.event_id}},
                update,
            )
            if result.matched_count == 1:
                if step.changed:
                    log.info(f"order {step.status.value}", extra=extra)
                    return step.status.value
                log.info("verdict recorded", extra={**extra, "note": step.note})
                return OUTCOME_RECORDED
            # Missed: a cancel (or another delivery of this event) committed in between.
        raise OrderKeptChanging(f"order {event.order_id} changed under every attempt")
