"""What inventory announces, through its own outbox: its verdict on an order and the release of
a reserved order's stock, each written in the transaction that makes the change it announces.

The aggregate is the order's reservation (``Reservation``): its id is the order id, so the relay
keys the records by order and they share the order's partition; version 1 is the verdict
(``StockReserved`` or ``StockRejected``), version 2 the release (``StockReleased``, only for an
order that was reserved). The outbox's unique (aggregateId, aggregateVersion) index makes a
second verdict or release of one order impossible, whatever the code above it does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from shared.contracts import (
    AGGREGATE_RESERVATION,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
)
from shared.events import OrderCreated, StockLine, StockRejected, StockReleased, StockReserved
from shared.outbox import FIRST_VERSION, pending_event_document

VERDICT_VERSION: Final = FIRST_VERSION
RELEASE_VERSION: Final = FIRST_VERSION + 1


@dataclass(frozen=True)
class Shortfall:
    """Why an order cannot be reserved: inventory's sentence, and the SKUs short or unknown."""

    reason: str
    skus: list[str]


@dataclass(frozen=True)
class Announcer:
    """Inserts inventory's events into its outbox, inside the caller's transaction.

    ``traceparent``: the trace the event continues (the handling of the order event that
    caused it); ``slots``: ``RELAY_SLOTS`` of the relays of this outbox.
    """

    outbox: AsyncCollection[dict[str, Any]]
    slots: int
    traceparent: str | None

    async def reserved(
        self, order: OrderCreated, at: datetime, session: AsyncClientSession
    ) -> None:
        """``StockReserved`` (version 1): every item of ``order`` was taken."""
        payload = StockReserved.answering(order, reserved_at=at)
        await self._insert(
            order.order_id, VERDICT_VERSION, EVENT_STOCK_RESERVED, payload.to_json(), at, session
        )

    async def rejected(
        self,
        order: OrderCreated,
        shortfall: Shortfall,
        at: datetime,
        session: AsyncClientSession,
    ) -> None:
        """``StockRejected`` (version 1): nothing was taken, with the reason and short SKUs."""
        payload = StockRejected.answering(
            order, reason=shortfall.reason, short_skus=shortfall.skus, rejected_at=at
        )
        await self._insert(
            order.order_id, VERDICT_VERSION, EVENT_STOCK_REJECTED, payload.to_json(), at, session
        )

    async def released(
        self,
        order_id: str,
        given_back: Counter[str],
        at: datetime,
        session: AsyncClientSession,
    ) -> None:
        """``StockReleased`` (version 2): what a reserved order's cancellation gave back."""
        payload = StockReleased(
            order_id=order_id,
            items=[StockLine(sku=sku, quantity=n) for sku, n in sorted(given_back.items())],
            released_at=at,
        )
        await self._insert(
            order_id, RELEASE_VERSION, EVENT_STOCK_RELEASED, payload.to_json(), at, session
        )

    async def _insert(
        self,
        order_id: str,
        version: int,
        event_type: str,
        payload: str,
        at: datetime,
        session: AsyncClientSession,
    ) -> None:
        await self.outbox.insert_one(
            pending_event_document(
                aggregate_type=AGGREGATE_RESERVATION,
                aggregate_id=order_id,
                aggregate_version=version,
                event_type=event_type,
                payload=payload,
                created_at=at,
                traceparent=self.traceparent,
                slots=self.slots,
            ),
            session=session,
        )
