"""The inventory and email consumers against the embedded stack: each event takes effect once,
whatever Kafka redelivers (inventory's on order.created here; email's on inventory's verdicts
in test_email_follows_the_verdict.py)."""

from __future__ import annotations

from functools import partial

from shared.contracts import (
    EVENT_ORDER_CREATED,
    EVENT_STOCK_RESERVED,
    IDEMPOTENCY_TTL_SECONDS,
    idempotency_key,
)
from tests.integration.consumers.conftest import Pipeline, order_event, reserved_event
from tests.waiting import wait_until

TIMEOUT = 60


async def _processed(p: Pipeline, event_id: str, service: str) -> bool:
    key = idempotency_key(service, EVENT_ORDER_CREATED, event_id)
    return bool(await p.redis.get(key) == b"done")


async def _inventory_done(p: Pipeline, event_id: str) -> bool:
    return await _processed(p, event_id, "inventory")


async def test_an_order_event_yields_one_reservation(pipeline: Pipeline) -> None:
    p = pipeline
    p.start("inventory")
    event = order_event(sku="SKU-2", quantity=3)
    event_id = await p.send(event)
    await wait_until(lambda: _inventory_done(p, event_id), timeout=TIMEOUT, message="inventory")

    [reservation] = await p.reservations(event.order_id)
    assert reservation["status"] == "reserved"
    assert reservation["eventId"] == event_id
    assert await p.available("SKU-2") == 97
    ttl = await p.redis.ttl(idempotency_key("inventory", EVENT_ORDER_CREATED, event_id))
    assert IDEMPOTENCY_TTL_SECONDS - 120 <= ttl <= IDEMPOTENCY_TTL_SECONDS


async def test_a_redelivered_copy_reserves_once(pipeline: Pipeline) -> None:
    p = pipeline
    p.start("inventory")
    event = order_event(sku="SKU-1", quantity=5)
    event_id = await p.send(event)
    await wait_until(lambda: _inventory_done(p, event_id), timeout=TIMEOUT, message="1st delivery")
    await p.send(event, event_id=event_id)  # the copy Kafka may deliver again
    # A later event on the same key (same partition) proves the copy has been consumed.
    marker = order_event(event.order_id + "-next", sku="SKU-1", quantity=1)
    marker_id = await p.send(marker, key=event.order_id)
    await wait_until(lambda: _inventory_done(p, marker_id), timeout=TIMEOUT, message="marker")

    assert len(await p.reservations(event.order_id)) == 1
    assert await p.available("SKU-1") == 100 - 5 - 1


async def test_another_services_done_key_does_not_suppress_the_email(pipeline: Pipeline) -> None:
    """The order service and email both consume inventory's verdict: the order's ``done`` key
    for it is not email's."""
    p = pipeline
    verdict = reserved_event(order_event())
    event_id = "evt-" + verdict.order_id
    await p.redis.set(idempotency_key("order", EVENT_STOCK_RESERVED, event_id), b"done")
    p.start("email")
    await p.send_verdict(verdict, event_id=event_id)
    email_key = idempotency_key("email", EVENT_STOCK_RESERVED, event_id)

    async def email_done() -> bool:
        return bool(await p.redis.get(email_key) == b"done")

    await wait_until(email_done, timeout=TIMEOUT, message="email done with the verdict")
    assert len(p.emails_for(event_id)) == 1


async def test_redelivery_after_redis_lost_its_keys_still_reserves_once(pipeline: Pipeline) -> None:
    """Redis is the fast path; the unique orderId in MongoDB is the guarantee."""
    p = pipeline
    p.start("inventory")
    event = order_event(sku="SKU-3", quantity=4)
    event_id = await p.send(event)
    await wait_until(lambda: _processed(p, event_id, "inventory"), timeout=TIMEOUT, message="1st")
    await p.redis.delete(idempotency_key("inventory", EVENT_ORDER_CREATED, event_id))
    await p.send(event, event_id=event_id)
    await wait_until(lambda: _processed(p, event_id, "inventory"), timeout=TIMEOUT, message="2nd")
    assert len(await p.reservations(event.order_id)) == 1
    assert await p.available("SKU-3") == 96


async def test_insufficient_stock_or_unknown_sku_is_recorded_as_rejected(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    p.start("inventory")
    too_many = order_event(sku="SKU-1", quantity=101)
    unknown = order_event(sku="NOPE-9", quantity=1)
    ids = [await p.send(too_many), await p.send(unknown)]
    for event_id in ids:
        await wait_until(
            partial(_processed, p, event_id, "inventory"),
            timeout=TIMEOUT,
            message="rejection recorded",
        )
    [r1] = await p.reservations(too_many.order_id)
    [r2] = await p.reservations(unknown.order_id)
    assert (r1["status"], r2["status"]) == ("rejected", "rejected")
    assert "insufficient stock" in r1["reason"] and "unknown sku: NOPE-9" in r2["reason"]
    assert await p.available("SKU-1") == 100
    assert await p.dlq() == []
