"""What happens to one cancel request: the order becomes ``cancelled``, the step is appended to its
history and its ``OrderCancelled`` event is written, in ONE MongoDB transaction.

A ``placed`` or ``confirmed`` order can be cancelled (:mod:`services.order.lifecycle`); a
``rejected`` one cannot (:class:`OrderNotCancellable`, a 409, nothing written). The update is
conditional on the status the transaction read, so a verdict committing in between makes it a
write conflict: the transaction runs again and decides on the verdict's status.

The order's ``version`` goes up by one and the event carries the new value as its
``aggregateVersion``, so consumers can tell which of an order's events came last whatever order
Kafka delivers them in (the two events travel on two topics). Cancelling is idempotent by
itself: a cancelled order is answered as it is and no second event is written. Two concurrent
cancels write to the same order document inside their transactions, so one of them hits a
write conflict, is retried from scratch and finds the order already cancelled; the unique
``(aggregateId, aggregateVersion)`` index on the outbox is the backstop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pymongo
from bson import ObjectId
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from services.order.handlers import IdempotencyConflict, order_out
from services.order.lifecycle import (
    CAUSE_CANCEL,
    CancelDecision,
    decide_cancel,
    history_entry,
    status_of,
)
from services.order.metrics import OrderMetrics
from services.order.models import (
    INDEX_ORDERS_CANCEL_IDEMPOTENCY_KEY,
    HistoryEntry,
    Order,
    OutboxEvent,
)
from services.order.schemas import OrderOut, OrderStatus
from shared.contracts import EVENT_ORDER_CANCELLED
from shared.events import OrderCancelled
from shared.mongo import MongoClient, run_in_transaction
from shared.outbox import utc_now_ms

log = logging.getLogger(__name__)

# A failed duplicate-key race is re-run once the winner's commit is visible; more than this many
# rounds means something other than a race is wrong.
_MAX_RACE_ROUNDS = 3


class OrderChangedError(Exception):
    """The conditional update matched nothing inside the transaction (cannot happen under
    snapshot isolation; aborting keeps 'order and event together' true if it ever does)."""


class OrderNotCancellable(Exception):
    """The order is in a status a cancel cannot leave (``rejected``): answered 409, naming it."""

    def __init__(self, order_id: str, status: OrderStatus) -> None:
        super().__init__(f"order {order_id} is {status.value} and cannot be cancelled")
        self.order_id = order_id
        self.status = status


@dataclass(frozen=True)
class CancelResult:
    order: OrderOut
    # This request cancelled the order now (False: it was cancelled before).
    cancelled_now: bool
    # The cancel was made earlier by a request with the same Idempotency-Key.
    replayed: bool


@dataclass(frozen=True)
class _Outcome:
    order: Order
    cancelled_now: bool
    event_id: str | None = None  # the OrderCancelled outbox event this call wrote


async def _key_used_elsewhere(
    key: str, user_id: str, oid: ObjectId, session: AsyncClientSession | None = None
) -> str | None:
    """The id of another order of ``user_id`` that a cancel with ``key`` already cancelled."""
    other = await Order.find_one(
        Order.user_id == user_id,
        Order.cancel_idempotency_key == key,
        {"_id": {"$ne": oid}},
        session=session,
        # Named for the reason given in handlers._replay: the index is partial.
        hint=INDEX_ORDERS_CANCEL_IDEMPOTENCY_KEY,
    )
    return None if other is None else str(other.id)


async def cancel_order(
    client: MongoClient,
    oid: ObjectId,
    *,
    owner: str,
    idempotency_key: str | None,
    traceparent: str,
    metrics: OrderMetrics,
    deadline_seconds: float,
    slots: int,
) -> CancelResult | None:
    """Cancel the order and write its pending ``OrderCancelled`` event, atomically.

    Returns None for an unknown id, and for an order that is not ``owner``'s (the bearer
    token's subject): the owner is part of the query, so another user's order takes the unknown
    id's path and its answer. ``oid`` was parsed where the request entered
    (:func:`shared.identifiers.parse_object_id`): the event's aggregateId, slot and payload carry
    ``str(oid)``, the stored spelling, whatever case the client sent. A cancelled order is
    returned unchanged (no event); a rejected one raises :class:`OrderNotCancellable` and nothing
    is written. An ``idempotency_key`` is scoped to the order's user: the same
    key on the same order is a replay; the same key on another order of that user raises
    :class:`IdempotencyConflict`.
    All database work shares one deadline, after which PyMongo raises a timeout (503).
    """
    order_id = str(oid)

    async def work(session: AsyncClientSession) -> _Outcome | None:
        order = await Order.find_one({"_id": oid}, Order.user_id == owner, session=session)
        if order is None:
            return None
        if idempotency_key is not None and order.cancel_idempotency_key != idempotency_key:
            other = await _key_used_elsewhere(idempotency_key, order.user_id, oid, session)
            if other is not None:
                raise IdempotencyConflict(idempotency_key)
        status = status_of(order.status)
        decision = decide_cancel(status)
        if decision is CancelDecision.ALREADY_CANCELLED:
            return _Outcome(order, cancelled_now=False)
        if decision is CancelDecision.REFUSED:
            # Raised inside the transaction: it aborts, so nothing of this request is written.
            raise OrderNotCancellable(order_id, status)
        cancelled_at = utc_now_ms()
        version = order.version + 1
        entry = history_entry(OrderStatus.CANCELLED, cancelled_at, CAUSE_CANCEL)
        changes: dict[str, object] = {
            "status": OrderStatus.CANCELLED.value,
            "version": version,
            "cancelledAt": cancelled_at,
        }
        if idempotency_key is not None:
            changes["cancelIdempotencyKey"] = idempotency_key
        # The version in the filter: the event below must follow exactly the version we read;
        # the stored status read (``created`` for an order placed before the state machine).
        result = await Order.get_pymongo_collection().update_one(
            {"_id": oid, "version": order.version, "status": order.status},
            {"$set": changes, "$push": {"history": entry}},
            session=session,
        )
        if result.modified_count != 1:
            raise OrderChangedError(f"order {order_id} changed during the transaction")
        payload = OrderCancelled(
            order_id=order_id,
            user_id=order.user_id,
            customer_email=order.customer_email,
            total=order.total,
            cancelled_at=cancelled_at,
        )
        event = await OutboxEvent.pending(
            aggregate_id=order_id,
            aggregate_version=version,
            event_type=EVENT_ORDER_CANCELLED,
            payload=payload.to_json(),
            created_at=cancelled_at,
            traceparent=traceparent,
            slots=slots,
        ).insert(session=session)
        order.status = OrderStatus.CANCELLED.value
        order.history.append(HistoryEntry.model_validate(entry))
        order.version = version
        order.cancelled_at = cancelled_at
        order.cancel_idempotency_key = idempotency_key or order.cancel_idempotency_key
        return _Outcome(order, cancelled_now=True, event_id=str(event.id))

    outcome: _Outcome | None = None
    with pymongo.timeout(deadline_seconds):
        for _ in range(_MAX_RACE_ROUNDS):
            try:
                outcome = await run_in_transaction(
                    client, work, on_retry=metrics.transaction_retries.inc
                )
                break
            except DuplicateKeyError:
                # A concurrent cancel committed first (the outbox's version index, or this key on
                # the user's other order): run again, now seeing its commit.
                continue
        else:
            raise RuntimeError(f"cancel of {order_id} kept colliding with concurrent commits")
    if outcome is None:
        return None
    order = outcome.order
    replayed = (
        not outcome.cancelled_now
        and idempotency_key is not None
        and order.cancel_idempotency_key == idempotency_key
    )
    if outcome.cancelled_now:
        metrics.orders_cancelled.inc()
        log.info("order cancelled", extra={"order_id": order_id, "event_id": outcome.event_id})
    elif replayed:
        metrics.idempotent_replays.inc()
    return CancelResult(order_out(order), cancelled_now=outcome.cancelled_now, replayed=replayed)
