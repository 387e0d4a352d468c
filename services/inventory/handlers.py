"""What happens to one order event: ``OrderCreated`` reserves all its items, or none;
``OrderCancelled`` gives them back (:mod:`services.inventory.cancellation`).

The whole decision runs in one MongoDB transaction (snapshot reads, majority commit). The
common case writes without reading first: insert the ``reserved`` record, then decrement every
SKU with a conditional ``$inc`` (``available >= quantity``) in one ordered bulk (one ``update``
command, whatever the number of lines), then commit: three round trips. The unique ``orderId``
index makes a second delivery a no-op even when Redis lost its dedup key (its insert collides
and the transaction aborts, touching no stock); a conditional ``$inc`` that matches nothing
aborts the transaction, and a second one reads the stock and records ``rejected`` with the
reason (or reserves, if stock arrived in between).

The transaction that records the verdict also inserts it into inventory's own outbox
(``StockReserved`` or ``StockRejected``, :mod:`services.inventory.announcements`); a relay of
the ``inventory`` database publishes it. A redelivery, aborted on the unique ``orderId``,
announces nothing a second time.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from services.inventory.announcements import Announcer, Shortfall
from services.inventory.cancellation import apply_cancellation
from services.inventory.models import (
    RESERVATIONS,
    STOCK,
    ReservationStatus,
    reservation_document,
)
from shared.consumer import Delivery
from shared.contracts import Header
from shared.events import OrderCancelled, OrderCreated, OrderEvent, aggregate_version_of
from shared.mongo import MongoClient, run_in_transaction
from shared.outbox import OUTBOX_COLLECTION, utc_now_ms
from shared.slots import DEFAULT_RELAY_SLOTS
from shared.tracing import current_traceparent, step_span

log = logging.getLogger(__name__)

OUTCOME_ALREADY_RESERVED = "already_recorded"
# A create and a cancel of one order committing at once collide on the unique orderId: the
# loser runs again and sees the winner. More rounds than this is not a race.
_MAX_RACE_ROUNDS = 3


class StockChangedError(Exception):
    """A conditional decrement matched nothing inside the transaction (should not happen under
    snapshot isolation; aborting keeps 'all or none' true if it ever does)."""


class _Shortfall(Exception):
    """A conditional decrement matched nothing on the short path: abort, then decide by reading."""


class ReservationHandler:
    def __init__(
        self, client: MongoClient, database: str, slots: int = DEFAULT_RELAY_SLOTS
    ) -> None:
        """``slots``: ``RELAY_SLOTS`` of the relays of this database's outbox."""
        self._client = client
        self._db = client[database]
        self._slots = slots

    def _announcer(self, delivery: Delivery) -> Announcer:
        # The event continues the trace of the order event that caused it: this handling's own
        # span when tracing is on, else the record's context as it came (same trace id).
        traceparent = current_traceparent() or delivery.headers.get(Header.TRACEPARENT)
        return Announcer(self._db[OUTBOX_COLLECTION], self._slots, traceparent)

    async def handle(self, event: OrderEvent, delivery: Delivery) -> str:
        """Apply one order event; returns the outcome label."""
        if isinstance(event, OrderCancelled):
            return await self.cancel(event, delivery)
        return await self.reserve(event, delivery)

    async def cancel(self, event: OrderCancelled, delivery: Delivery) -> str:
        """Give back what the order reserved, or record the cancel for a creation still to
        come; a replay changes nothing (see :mod:`services.inventory.cancellation`)."""
        version = aggregate_version_of(delivery.headers)

        announce = self._announcer(delivery)

        async def work(session: AsyncClientSession) -> str:
            return await apply_cancellation(
                self._db, session, event, delivery.event_id, version, announce
            )

        for _ in range(_MAX_RACE_ROUNDS):
            try:
                outcome = await run_in_transaction(self._client, work)
                break
            except DuplicateKeyError:
                # The order's creation committed its reservation between our read and insert.
                continue
        else:
            raise RuntimeError(f"cancel of {event.order_id} kept colliding with its creation")
        log.info(
            "cancellation",
            extra={"order_id": event.order_id, "event_id": delivery.event_id, "status": outcome},
        )
        return outcome

    async def reserve(self, event: OrderCreated, delivery: Delivery) -> str:
        """Reserve the event's items once. Returns ``reserved``, ``rejected`` or
        ``already_recorded`` (a redelivery whose reservation MongoDB already holds, or a
        creation whose cancel was recorded first: version 1 is below the record's)."""
        wanted = Counter[str]()
        for item in event.items:
            wanted[item.sku] += item.quantity  # an order may list one SKU on several lines

        announce = self._announcer(delivery)

        async def short_path(session: AsyncClientSession) -> str:
            now = utc_now_ms()
            # Insert first: a repeat collides on orderId before any stock is touched.
            await self._db[RESERVATIONS].insert_one(
                reservation_document(
                    event, delivery.event_id, ReservationStatus.RESERVED, None, now
                ),
                session=session,
            )
            short = await self._take(wanted, session)
            if short is not None:
                raise _Shortfall(short)  # aborts: the insert and earlier $inc roll back
            await announce.reserved(event, now, session)
            return ReservationStatus.RESERVED.value

        async def work(session: AsyncClientSession) -> str:
            reservations = self._db[RESERVATIONS]
            if await reservations.find_one(
                {"orderId": event.order_id}, {"_id": 1}, session=session
            ):
                return OUTCOME_ALREADY_RESERVED
            stock = {
                doc["sku"]: int(doc["available"])
                async for doc in self._db[STOCK].find(
                    {"sku": {"$in": list(wanted)}}, session=session
                )
            }
            shortfall = _shortfall(wanted, stock)
            if shortfall is None:
                short = await self._take(wanted, session)
                if short is not None:
                    raise StockChangedError(f"stock changed during the transaction ({short})")
                status = ReservationStatus.RESERVED
            else:
                status = ReservationStatus.REJECTED
            now = utc_now_ms()
            reason = shortfall.reason if shortfall is not None else None
            await reservations.insert_one(
                reservation_document(event, delivery.event_id, status, reason, now),
                session=session,
            )
            if shortfall is None:
                await announce.reserved(event, now, session)
            else:
                await announce.rejected(event, shortfall, now, session)
            return status.value

        try:
            with step_span("inventory reservation transaction"):
                try:
                    outcome = await run_in_transaction(self._client, short_path)
                except _Shortfall:
                    outcome = await run_in_transaction(self._client, work)
        except DuplicateKeyError:
            # Another delivery committed the same orderId between our read and our insert.
            outcome = OUTCOME_ALREADY_RESERVED
        log.info(
            "reservation",
            extra={"order_id": event.order_id, "event_id": delivery.event_id, "status": outcome},
        )
        return outcome

    async def _take(self, wanted: Counter[str], session: AsyncClientSession) -> str | None:
        """Decrement each SKU by its quantity where enough is available, all in one command;
        None when every conditional ``$inc`` matched its SKU, else the SKUs of the order (one
        of them is short; the caller aborts the transaction, which undoes the others)."""
        result = await self._db[STOCK].bulk_write(
            [
                UpdateOne(
                    {"sku": sku, "available": {"$gte": quantity}},
                    {"$inc": {"available": -quantity}},
                )
                for sku, quantity in wanted.items()
            ],
            # A statement that matches nothing is no error: the bulk goes on, and the count of
            # matches says whether all took. SKUs are unique, so each matches at most once.
            ordered=True,
            session=session,
        )
        if result.matched_count == len(wanted):
            return None
        return ", ".join(sorted(wanted))


def _shortfall(wanted: Counter[str], stock: dict[str, Any]) -> Shortfall | None:
    """Why the order cannot be reserved and which SKUs are unknown or short, or None when
    every SKU has enough stock."""
    unknown = sorted(sku for sku in wanted if sku not in stock)
    short = sorted(sku for sku, qty in wanted.items() if sku in stock and stock[sku] < qty)
    reasons = []
    if unknown:
        reasons.append(f"unknown sku: {', '.join(unknown)}")
    if short:
        lines = (f"{sku} (wanted {wanted[sku]}, available {stock[sku]})" for sku in short)
        reasons.append(f"insufficient stock: {'; '.join(lines)}")
    if not reasons:
        return None
    return Shortfall("; ".join(reasons), sorted(unknown + short))
