"""What happens to one request: create an order (with its outbox event) or read one back.

The order and its ``OrderCreated`` event are inserted in ONE MongoDB transaction, so an order
never exists without its event and an event never exists without its order. Kafka is not
involved: the relay publishes committed outbox events later, whatever state the broker is in.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC

import pymongo
from bson import ObjectId
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from services.order.lifecycle import history_of, status_of
from services.order.metrics import OrderMetrics
from services.order.models import INDEX_ORDERS_IDEMPOTENCY_KEY, Order, OrderLine, OutboxEvent
from services.order.schemas import (
    CreateOrderRequest,
    EventOut,
    OrderItemOut,
    OrderOut,
    OrderStatus,
    OrderWithEventsOut,
)
from shared.contracts import EVENT_ORDER_CREATED
from shared.events import EventItem, OrderCreated
from shared.mongo import MongoClient, run_in_transaction
from shared.outbox import FIRST_VERSION, utc_now_ms
from shared.tracing import current_traceparent, step_span

log = logging.getLogger(__name__)

# The creation of an order is its first event: the aggregate's version after it is the first.
CREATED_VERSION = FIRST_VERSION

# W3C trace context, version 00: 32 hex trace id and 16 hex parent id, neither all zeros.
_TRACEPARENT = re.compile(
    r"^00-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})$"
)


class IdempotencyConflict(Exception):
    """The caller already used this Idempotency-Key for a request with a different body.

    It carries no order id on purpose: the answer to a mistaken or guessed key must not point
    at an order.
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was used for a different request")
        self.key = key


@dataclass(frozen=True)
class CreateResult:
    order: OrderOut
    replayed: bool


def traceparent_for(incoming: str | None) -> str:
    """The trace context to store with the event: the caller's trace with this request as the
    parent span, or a new sampled trace when the caller sent none or an invalid one.

    With tracing on it is the context of this request's own server span (whose parent is the
    caller's, if any): the relay's and the consumers' spans then hang under the span that
    really wrote the event."""
    if current := current_traceparent():
        return current
    match = _TRACEPARENT.match(incoming.strip().lower()) if incoming else None
    if match and set(match["trace"]) != {"0"} and set(match["parent"]) != {"0"}:
        return f"00-{match['trace']}-{secrets.token_hex(8)}-{match['flags']}"
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def order_out(order: Order) -> OrderOut:
    return OrderOut(
        id=str(order.id),
        user_id=order.user_id,
        customer_email=order.customer_email,
        items=[
            OrderItemOut(sku=line.sku, quantity=line.quantity, unit_price=line.unit_price)
            for line in order.items
        ],
        total=order.total,
        status=status_of(order.status),
        history=history_of(order),
        created_at=order.created_at.astimezone(UTC),
        cancelled_at=order.cancelled_at.astimezone(UTC) if order.cancelled_at else None,
    )


async def _replay(
    user_id: str, key: str, fingerprint: str, metrics: OrderMetrics
) -> CreateResult | None:
    # Keys are scoped to the caller (as payment APIs scope them to the account): another user's
    # order made with the same key is neither replayed nor a conflict.
    existing = await Order.find_one(
        Order.user_id == user_id,
        Order.idempotency_key == key,
        # Named because the index is partial: MongoDB's planner proves an equality on a string
        # matches its filter and picks it, but not every server does, and a scan here makes every
        # keyed request slower with each order ever taken.
        hint=INDEX_ORDERS_IDEMPOTENCY_KEY,
    )
    if existing is None:
        return None
    if existing.request_hash != fingerprint:
        raise IdempotencyConflict(key)
    metrics.idempotent_replays.inc()
    return CreateResult(order_out(existing), replayed=True)


async def create_order(
    client: MongoClient,
    request: CreateOrderRequest,
    *,
    user_id: str,
    idempotency_key: str | None,
    traceparent: str,
    metrics: OrderMetrics,
    deadline_seconds: float,
    slots: int,
) -> CreateResult:
    """Insert the order of ``user_id`` (the bearer token's subject; the route has checked that
    a body ``userId``, if any, is the same) and its pending ``OrderCreated`` outbox event in
    one transaction.

    An ``idempotency_key`` belongs to ``user_id``: with it, the same request of the
    same user returns that user's first order (``replayed``) and a different request raises
    :class:`IdempotencyConflict`; other users' keys play no part. The unique (userId,
    idempotencyKey) index decides, inside the transaction: a key already used makes the order's
    insert fail with a DuplicateKeyError, and the earlier order is read and replayed. Concurrent
    requests of one user with one key race on the same index: exactly one commits, the others
    get a DuplicateKeyError (or a write conflict, retried until the winner's order is visible)
    and replay the winner. All database work shares one deadline (``pymongo.timeout``), after
    which PyMongo raises a timeout error the app turns into 503.

    A key is not looked up before the transaction: a first request (nearly every request) would
    pay a read for nothing, and the index makes the same decision anyway; a retry pays for it
    instead (an aborted transaction, then the read).
    """
    fingerprint = request.fingerprint(user_id)
    with pymongo.timeout(deadline_seconds):
        created_at = utc_now_ms()
        lines = [
            OrderLine(sku=item.sku, quantity=item.quantity, unit_price=item.unit_price)
            for item in request.items
        ]
        total = request.total()

        async def work(session: AsyncClientSession) -> tuple[Order, OutboxEvent]:
            # Runs again from scratch on TransientTransactionError: build fresh documents each
            # time so a retried attempt never reuses an id minted by the aborted one.
            order = Order(
                id=ObjectId(),
                user_id=user_id,
                customer_email=request.customer_email,
                items=lines,
                total=total,
                status=OrderStatus.PLACED.value,
                created_at=created_at,
                version=CREATED_VERSION,
                idempotency_key=idempotency_key,
                request_hash=fingerprint if idempotency_key is not None else None,
            )
            await order.insert(session=session)
            payload = OrderCreated(
                order_id=str(order.id),
                user_id=order.user_id,
                customer_email=order.customer_email,
                total=total,
                items=[
                    EventItem(sku=line.sku, quantity=line.quantity, unit_price=line.unit_price)
                    for line in lines
                ],
                created_at=created_at,
            )
            event = OutboxEvent.pending(
                aggregate_id=str(order.id),
                aggregate_version=order.version,
                event_type=EVENT_ORDER_CREATED,
                payload=payload.to_json(),
                created_at=created_at,
                traceparent=traceparent,
                slots=slots,
            )
            await event.insert(session=session)
            return order, event

        try:
            with step_span("order transaction"):
                order, event = await run_in_transaction(
                    client, work, on_retry=metrics.transaction_retries.inc
                )
        except DuplicateKeyError:
            if idempotency_key is None:
                raise
            # An earlier request with this key committed (a retry, or a concurrent request that
            # won): answer with its order (its commit is visible by now).
            replay = await _replay(user_id, idempotency_key, fingerprint, metrics)
            if replay is None:
                # Not this user's order: the old global index refused it, rebuilt by an instance
                # of the previous version mid-rollout (see services.order.indexes). The key is
                # taken as far as that index goes; say so as the previous version did.
                raise IdempotencyConflict(idempotency_key) from None
            return replay

    metrics.orders_created.inc()
    # The event id is the trail the relay and both consumers log too.
    log.info("order created", extra={"order_id": str(order.id), "event_id": str(event.id)})
    return CreateResult(order_out(order), replayed=False)


async def get_order(
    oid: ObjectId, *, owner: str | None, deadline_seconds: float
) -> OrderWithEventsOut | None:
    """The order with its outbox events (oldest first); None for an unknown id, and for an
    order that is not ``owner``'s (``owner`` None: any order, for support staff).

    The owner is part of the query, not checked afterwards: another user's order and an unknown
    id take the same path (one query by ``_id`` finding nothing), so neither the answer nor its
    work tells them apart.
    """
    with pymongo.timeout(deadline_seconds):
        if owner is None:
            order = await Order.get(oid)
        else:
            order = await Order.find_one({"_id": oid}, Order.user_id == owner)
        if order is None:
            return None
        events = (
            await OutboxEvent.find(OutboxEvent.aggregate_id == str(oid))
            .sort("aggregateVersion")
            .to_list()
        )
    base = order_out(order)
    return OrderWithEventsOut(
        **base.model_dump(),
        events=[
            EventOut(
                event_id=str(event.id),
                event_type=event.event_type,
                status=event.status,
                published_at=event.published_at,
            )
            for event in events
        ],
    )
