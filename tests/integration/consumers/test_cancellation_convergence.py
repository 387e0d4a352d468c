"""Order cancellations against the embedded stack: whatever order the two topics deliver an
order's events in, and however often either is replayed, both consumers end where applying the
events in aggregateVersion order would put them."""

from __future__ import annotations

import asyncio
import uuid

from services.email.handlers import SERVICE as EMAIL
from services.email.order_state import OrderState, OrderStates
from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    EVENT_STOCK_RESERVED,
    ORDER_STATE_TTL_SECONDS,
    Header,
    idempotency_key,
)
from shared.idempotency import Claim, IdempotencyStore
from tests.integration.consumers.conftest import (
    Pipeline,
    cancel_event,
    order_event,
    reserved_event,
)
from tests.waiting import wait_until

TIMEOUT = 60
INVENTORY = "inventory"


async def _done(p: Pipeline, service: str, event_type: str, event_id: str) -> bool:
    return bool(await p.redis.get(idempotency_key(service, event_type, event_id)) == b"done")


async def _wait_done(p: Pipeline, event_type: str, event_id: str, *services: str) -> None:
    # Both consumers follow the cancel; only inventory reads the creation (email mails
    # inventory's verdict, produced here by hand where a test needs it).
    everyone = (INVENTORY,) if event_type == EVENT_ORDER_CREATED else (INVENTORY, EMAIL)
    for service in services or everyone:
        await wait_until(
            lambda s=service: _done(p, s, event_type, event_id),  # type: ignore[misc]
            timeout=TIMEOUT,
            message=f"{service} done with {event_type} {event_id}",
        )


async def test_cancel_after_reservation_gives_the_stock_back_and_mails_a_cancellation(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    p.start()
    created = order_event(sku="SKU-2", quantity=4)
    created_id = await p.send(created)
    await _wait_done(p, EVENT_ORDER_CREATED, created_id)
    assert await p.available("SKU-2") == 96
    verdict_id = await p.send_verdict(reserved_event(created))  # what inventory's relay sends
    await _wait_done(p, EVENT_STOCK_RESERVED, verdict_id, EMAIL)

    cancel_id = await p.send_cancel(cancel_event(created))
    await _wait_done(p, EVENT_ORDER_CANCELLED, cancel_id)

    [reservation] = await p.reservations(created.order_id)
    assert (reservation["status"], reservation["version"]) == ("cancelled", 2)
    assert reservation["cancelEventId"] == cancel_id
    assert await p.available("SKU-2") == 100
    assert p.subjects_for(created.order_id) == [
        f"Order {created.order_id} confirmed",
        f"Order {created.order_id} cancelled",
    ]
    [notice] = p.emails_for(cancel_id)
    assert notice["Message-ID"] == f"<{cancel_id}.order-cancelled@outbox.local>"


async def test_cancel_arriving_before_its_creation_is_recorded_and_nothing_is_reserved(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    p.start()
    created = order_event(sku="SKU-1", quantity=7)
    cancel_id = await p.send_cancel(cancel_event(created))
    await _wait_done(p, EVENT_ORDER_CANCELLED, cancel_id)
    [early] = await p.reservations(created.order_id)
    assert (early["status"], early["items"], early["version"]) == ("cancelled", [], 2)

    created_id = await p.send(created)
    await _wait_done(p, EVENT_ORDER_CREATED, created_id)

    [reservation] = await p.reservations(created.order_id)
    assert (reservation["status"], reservation["items"]) == ("cancelled", [])
    assert await p.available("SKU-1") == 100
    # Email knew the order as cancelled before the creation came: no confirmation, ever.
    assert p.subjects_for(created.order_id) == [f"Order {created.order_id} cancelled"]


async def test_replays_after_the_cancel_change_nothing_even_without_redis_keys(
    pipeline: Pipeline,
) -> None:
    """Redis dedup keys lost (or a DLQ replay with a new delivery): aggregateVersion decides."""
    p = pipeline
    p.start()
    created = order_event(sku="SKU-3", quantity=5)
    cancelled = cancel_event(created)
    created_id = await p.send(created)
    await _wait_done(p, EVENT_ORDER_CREATED, created_id)
    cancel_id = await p.send_cancel(cancelled)
    await _wait_done(p, EVENT_ORDER_CANCELLED, cancel_id)
    for service in (INVENTORY, EMAIL):
        await p.redis.delete(
            idempotency_key(service, EVENT_ORDER_CREATED, created_id),
            idempotency_key(service, EVENT_ORDER_CANCELLED, cancel_id),
        )

    await p.send(created, event_id=created_id)
    await p.send_cancel(cancelled, event_id=cancel_id)
    await _wait_done(p, EVENT_ORDER_CREATED, created_id)
    await _wait_done(p, EVENT_ORDER_CANCELLED, cancel_id)

    [reservation] = await p.reservations(created.order_id)
    assert (reservation["status"], reservation["version"]) == ("cancelled", 2)
    assert await p.available("SKU-3") == 100  # not reserved again, not given back twice
    # The replayed cancel sends no second notice: the order's state recorded that it left, and
    # outlives the dedup keys (the verdicts' replays: test_email_follows_the_verdict.py).
    assert p.subjects_for(created.order_id) == [f"Order {created.order_id} cancelled"]
    [notice] = p.emails_for(cancel_id)
    assert notice["Message-ID"] == f"<{cancel_id}.order-cancelled@outbox.local>"


async def test_creations_and_cancels_racing_on_two_topics_converge(pipeline: Pipeline) -> None:
    p = pipeline
    p.start()
    orders = [order_event(sku="SKU-1", quantity=2) for _ in range(20)]
    # Half the cancels are produced before their creation, half after, all concurrently.
    sends = []
    for index, created in enumerate(orders):
        cancelled = cancel_event(created)
        if index % 2:
            sends += [p.send_cancel(cancelled), p.send(created)]
        else:
            sends += [p.send(created), p.send_cancel(cancelled)]
    ids = await asyncio.gather(*sends)
    pairs = list(zip(ids[0::2], ids[1::2], strict=True))
    for index, (first, second) in enumerate(pairs):
        created_id, cancel_id = (second, first) if index % 2 else (first, second)
        await _wait_done(p, EVENT_ORDER_CREATED, created_id)
        await _wait_done(p, EVENT_ORDER_CANCELLED, cancel_id)

    assert await p.available("SKU-1") == 100
    for created in orders:
        [reservation] = await p.reservations(created.order_id)
        assert (reservation["status"], reservation["version"]) == ("cancelled", 2)
        subjects = p.subjects_for(created.order_id)
        cancellation = f"Order {created.order_id} cancelled"
        assert subjects.count(cancellation) == 1
        # At most one confirmation, and never after the cancellation.
        assert subjects[-1] == cancellation and len(subjects) <= 2


async def test_a_poison_cancel_goes_to_the_dlq_of_the_cancel_topic(pipeline: Pipeline) -> None:
    p = pipeline
    p.start(INVENTORY)
    created = order_event()
    await p.producer.send_and_wait(
        p.cancelled_topic,
        key=created.order_id.encode(),
        value=cancel_event(created).to_json().encode(),
        # No aggregateVersion header: the event cannot be ordered against its creation.
        headers=[(Header.IDEMPOTENCY_KEY, uuid.uuid4().hex.encode())],
    )
    records = await wait_until(
        lambda: p.dlq(source_topic=p.cancelled_topic), timeout=TIMEOUT, message="DLQ record"
    )
    [record] = records
    assert Header.AGGREGATE_VERSION in record.headers[Header.FAILURE_REASON]
    assert record.original_topic == p.cancelled_topic
    assert await p.reservations(created.order_id) == []


async def test_email_holds_a_cancellation_while_a_confirmation_is_in_flight(
    pipeline: Pipeline,
) -> None:
    """The per-order gate on the real Redis: a cancellation waits while the confirmation's
    dedup claim is live, not after it is gone, and a known cancellation stops every later
    confirmation."""
    redis = pipeline.redis
    states = OrderStates(redis, f"email-{uuid.uuid4().hex[:6]}")
    store = IdempotencyStore(redis, "email-gate-test", lease_seconds=30)
    order_id = uuid.uuid4().hex
    claim = store.key(EVENT_STOCK_RESERVED, uuid.uuid4().hex)
    assert await store.claim(claim) is Claim.CLAIMED

    assert await states.begin_confirmation(order_id, claim) is OrderState.NONE
    assert await states.begin_cancellation(order_id) is OrderState.CONFIRMING
    assert await states.get(order_id) is OrderState.CONFIRMING  # the cancel changed nothing
    await states.end_confirmation(order_id)
    assert await states.begin_cancellation(order_id) is OrderState.CONFIRMED
    assert await states.begin_confirmation(order_id, claim) is OrderState.CANCELLED
    assert await states.get(order_id) is OrderState.CANCELLED
    assert await redis.ttl(states.key(order_id)) >= ORDER_STATE_TTL_SECONDS - 120

    # A sender that died mid-send: its claim expires, and the cancellation goes ahead.
    crashed = uuid.uuid4().hex
    dead_claim = store.key(EVENT_STOCK_RESERVED, uuid.uuid4().hex)
    assert await store.claim(dead_claim) is Claim.CLAIMED
    assert await states.begin_confirmation(crashed, dead_claim) is OrderState.NONE
    assert await states.begin_cancellation(crashed) is OrderState.CONFIRMING
    await redis.delete(dead_claim)  # what the lease's expiry does
    assert await states.begin_cancellation(crashed) is OrderState.NONE
    assert await states.get(crashed) is OrderState.CANCELLED
