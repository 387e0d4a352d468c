"""The customer hears inventory's verdict, on real servers: one confirmation for a reserved
order, one notice naming what was short for a rejected one, nothing for ``order.created``, and
never a confirmation for a rejected or cancelled order, whatever the arrival order and however
often anything is replayed.

The tests produce inventory's verdicts themselves, as inventory's relay would (value the event's
JSON, key the order id, the contract's headers), on the pipeline's private topics.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from services.email.handlers import SERVICE as EMAIL
from services.email.order_state import OrderState, OrderStates
from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RESERVED,
    IDEMPOTENCY_TTL_SECONDS,
    ORDER_STATE_TTL_SECONDS,
    Header,
    idempotency_key,
)
from shared.events import StockRejected, StockReserved
from shared.idempotency import Claim, IdempotencyStore
from tests.integration.consumers.conftest import (
    Pipeline,
    cancel_event,
    order_event,
    rejected_event,
    reserved_event,
)
from tests.waiting import wait_until

TIMEOUT = 60


async def _done(p: Pipeline, event_type: str, event_id: str) -> bool:
    return bool(await p.redis.get(idempotency_key(EMAIL, event_type, event_id)) == b"done")


async def _wait_done(p: Pipeline, event_type: str, event_id: str) -> None:
    await wait_until(
        lambda: _done(p, event_type, event_id),
        timeout=TIMEOUT,
        message=f"email done with {event_type} {event_id}",
    )


def _confirmed(order_id: str) -> str:
    return f"Order {order_id} confirmed"


def _rejected(order_id: str) -> str:
    return f"Order {order_id} could not be fulfilled"


def _cancelled(order_id: str) -> str:
    return f"Order {order_id} cancelled"


async def test_a_reserved_order_gets_one_confirmation(pipeline: Pipeline) -> None:
    p = pipeline
    p.start("email")
    created = order_event(sku="SKU-2", quantity=3)
    event_id = await p.send_verdict(reserved_event(created))
    await _wait_done(p, EVENT_STOCK_RESERVED, event_id)

    [mail] = p.emails_for(event_id)
    assert mail["To"] == "buyer@example.com"
    assert mail["Subject"] == _confirmed(created.order_id)
    assert mail["Message-ID"] == f"<{event_id}.order-confirmed@outbox.local>"
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"3 x SKU-2" in body and b"Total: 37.50" in body
    assert await OrderStates(p.redis, EMAIL).get(created.order_id) is OrderState.CONFIRMED
    ttl = await p.redis.ttl(idempotency_key(EMAIL, EVENT_STOCK_RESERVED, event_id))
    assert IDEMPOTENCY_TTL_SECONDS - 120 <= ttl <= IDEMPOTENCY_TTL_SECONDS


async def test_a_rejected_order_gets_one_notice_naming_the_short_sku_and_no_confirmation(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    p.start("email")
    created = order_event(sku="SKU-7", quantity=4)
    event_id = await p.send_verdict(rejected_event(created))
    await _wait_done(p, EVENT_STOCK_REJECTED, event_id)

    [notice] = p.emails_for(event_id)
    assert notice["Message-ID"] == f"<{event_id}.order-rejected@outbox.local>"
    body = notice.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"Not available: SKU-7" in body
    assert b"insufficient stock: SKU-7 (wanted 4, available 0)" in body
    assert p.subjects_for(created.order_id) == [_rejected(created.order_id)]
    assert await OrderStates(p.redis, EMAIL).get(created.order_id) is OrderState.REJECTION_SENT


async def test_a_cancel_before_the_verdict_means_no_confirmation_and_no_rejection_notice(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    p.start("email")
    reserved_then, rejected_then = order_event(), order_event()
    for created in (reserved_then, rejected_then):
        cancel_id = await p.send_cancel(cancel_event(created))
        await _wait_done(p, EVENT_ORDER_CANCELLED, cancel_id)
    reserved_id = await p.send_verdict(reserved_event(reserved_then))
    rejected_id = await p.send_verdict(rejected_event(rejected_then))
    await _wait_done(p, EVENT_STOCK_RESERVED, reserved_id)
    await _wait_done(p, EVENT_STOCK_REJECTED, rejected_id)

    for created in (reserved_then, rejected_then):
        assert p.subjects_for(created.order_id) == [_cancelled(created.order_id)]


async def test_a_verdict_replayed_after_the_cancellation_notice_sends_nothing(
    pipeline: Pipeline,
) -> None:
    """Reserved and confirmed, then cancelled: the verdict replayed (its dedup key gone, as a
    DLQ replay days later finds it) sends no second confirmation after the cancellation."""
    p = pipeline
    p.start("email")
    created = order_event()
    reserved = reserved_event(created)
    reserved_id = await p.send_verdict(reserved)
    await _wait_done(p, EVENT_STOCK_RESERVED, reserved_id)
    cancel_id = await p.send_cancel(cancel_event(created))
    await _wait_done(p, EVENT_ORDER_CANCELLED, cancel_id)
    await p.redis.delete(idempotency_key(EMAIL, EVENT_STOCK_RESERVED, reserved_id))

    await p.send_verdict(reserved, event_id=reserved_id)
    await _wait_done(p, EVENT_STOCK_RESERVED, reserved_id)
    assert p.subjects_for(created.order_id) == [
        _confirmed(created.order_id),
        _cancelled(created.order_id),
    ]


async def test_replays_of_every_event_change_nothing_even_without_dedup_keys(
    pipeline: Pipeline,
) -> None:
    """Each kind sent once, then every record again with its dedup key lost: the order's state
    recorded each send, so no mail leaves a second time."""
    p = pipeline
    p.start("email")
    confirmed, rejected, cancelled = order_event(), order_event(), order_event()
    sent: list[tuple[str, StockReserved | StockRejected]] = [
        (EVENT_STOCK_RESERVED, reserved_event(confirmed)),
        (EVENT_STOCK_REJECTED, rejected_event(rejected)),
        (EVENT_STOCK_RESERVED, reserved_event(cancelled)),
    ]
    ids = [await p.send_verdict(event) for _, event in sent]
    cancel = cancel_event(cancelled)
    for (event_type, _), event_id in zip(sent, ids, strict=True):
        await _wait_done(p, event_type, event_id)
    cancel_id = await p.send_cancel(cancel)
    await _wait_done(p, EVENT_ORDER_CANCELLED, cancel_id)
    before = {o.order_id: p.subjects_for(o.order_id) for o in (confirmed, rejected, cancelled)}
    assert before == {
        confirmed.order_id: [_confirmed(confirmed.order_id)],
        rejected.order_id: [_rejected(rejected.order_id)],
        cancelled.order_id: [_confirmed(cancelled.order_id), _cancelled(cancelled.order_id)],
    }

    keys = [idempotency_key(EMAIL, t, i) for (t, _), i in zip(sent, ids, strict=True)]
    await p.redis.delete(*keys, idempotency_key(EMAIL, EVENT_ORDER_CANCELLED, cancel_id))
    for (_, event), event_id in zip(sent, ids, strict=True):
        await p.send_verdict(event, event_id=event_id)
    await p.send_cancel(cancel, event_id=cancel_id)
    for (event_type, _), event_id in zip(sent, ids, strict=True):
        await _wait_done(p, event_type, event_id)
    await _wait_done(p, EVENT_ORDER_CANCELLED, cancel_id)

    after = {o.order_id: p.subjects_for(o.order_id) for o in (confirmed, rejected, cancelled)}
    assert after == before


async def test_order_created_alone_sends_nothing(pipeline: Pipeline) -> None:
    """One mail per outcome: the creation is no outcome. A verdict produced after the creation
    (same key, so behind it were both on one topic) has been handled, the creation never."""
    p = pipeline
    p.start("email")
    created = order_event()
    created_id = await p.send(created)
    other = order_event()
    marker_id = await p.send_verdict(reserved_event(other))
    await _wait_done(p, EVENT_STOCK_RESERVED, marker_id)

    assert p.subjects_for(created.order_id) == []
    assert p.emails_for(created_id) == []
    assert not await p.redis.exists(idempotency_key(EMAIL, EVENT_ORDER_CREATED, created_id))
    assert await OrderStates(p.redis, EMAIL).get(created.order_id) is OrderState.NONE
    assert await p.dlq(p.email_group) == []


async def test_a_poison_stock_reserved_goes_to_its_dlq_with_the_reason_and_the_next_flows(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    p.start("email")
    created = order_event()
    good = json.loads(reserved_event(created).to_json())
    poison = json.dumps({k: v for k, v in good.items() if k != "reservedAt"}).encode()
    poison_id = await p.send_verdict(reserved_event(created), value=poison)
    good_id = await p.send_verdict(reserved_event(created))  # same key: behind the poison
    await _wait_done(p, EVENT_STOCK_RESERVED, good_id)

    [record] = await wait_until(
        lambda: p.dlq(p.email_group, source_topic=p.reserved_topic),
        timeout=TIMEOUT,
        message="the DLQ record",
    )
    h = record.headers
    assert h[Header.IDEMPOTENCY_KEY] == poison_id
    assert h[Header.FAILURE_REASON].startswith("PoisonMessage: ")
    assert "reservedAt" in h[Header.FAILURE_REASON]
    assert record.original_topic == p.reserved_topic
    assert h[Header.EVENT_TYPE] == EVENT_STOCK_RESERVED
    assert record.key == created.order_id.encode()
    assert p.emails_for(poison_id) == []
    assert len(p.emails_for(good_id)) == 1


async def test_verdicts_and_cancels_racing_on_three_topics_converge(pipeline: Pipeline) -> None:
    """Half the orders reserved, half rejected; half the cancels produced before their verdict,
    half after, all at once: per order one cancellation notice, at most one verdict mail, and
    never a verdict mail after the cancellation notice."""
    p = pipeline
    p.start("email")
    orders = [order_event() for _ in range(16)]
    sends = []
    for index, created in enumerate(orders):
        verdict = reserved_event(created) if index % 2 else rejected_event(created)
        cancel, decision = p.send_cancel(cancel_event(created)), p.send_verdict(verdict)
        sends += [cancel, decision] if index % 4 < 2 else [decision, cancel]
    ids = await asyncio.gather(*sends)
    for index in range(len(orders)):
        first, second = ids[2 * index], ids[2 * index + 1]
        cancel_id, verdict_id = (first, second) if index % 4 < 2 else (second, first)
        verdict_type = EVENT_STOCK_RESERVED if index % 2 else EVENT_STOCK_REJECTED
        await _wait_done(p, EVENT_ORDER_CANCELLED, cancel_id)
        await _wait_done(p, verdict_type, verdict_id)

    for index, created in enumerate(orders):
        subjects = p.subjects_for(created.order_id)
        told = (_confirmed if index % 2 else _rejected)(created.order_id)
        assert subjects in ([_cancelled(created.order_id)], [told, _cancelled(created.order_id)])


async def test_the_order_state_gives_one_verdict_mail_and_holds_a_cancel_behind_either(
    pipeline: Pipeline,
) -> None:
    """The state scripts on the real Redis: the first verdict owns the order (in flight or
    recorded, the other kind is refused), a cancellation waits while either verdict's claim is
    live, and a known cancellation refuses both."""
    redis = pipeline.redis
    states = OrderStates(redis, f"email-{uuid.uuid4().hex[:6]}")
    store = IdempotencyStore(redis, "email-verdict-test", lease_seconds=30)

    rejected = uuid.uuid4().hex
    claim = store.key(EVENT_STOCK_REJECTED, uuid.uuid4().hex)
    assert await store.claim(claim) is Claim.CLAIMED
    assert await states.begin_rejection(rejected, claim) is OrderState.NONE
    other_claim = store.key(EVENT_STOCK_RESERVED, uuid.uuid4().hex)
    assert await states.begin_confirmation(rejected, other_claim) is OrderState.REJECTING
    assert await states.begin_cancellation(rejected) is OrderState.REJECTING
    assert await states.get(rejected) is OrderState.REJECTING  # neither changed anything
    await states.end_rejection(rejected)
    assert await states.begin_rejection(rejected, claim) is OrderState.REJECTION_SENT
    assert await states.begin_confirmation(rejected, other_claim) is OrderState.REJECTION_SENT
    assert await redis.ttl(states.key(rejected)) >= ORDER_STATE_TTL_SECONDS - 120
    assert await states.begin_cancellation(rejected) is OrderState.REJECTION_SENT
    assert await states.begin_rejection(rejected, claim) is OrderState.CANCELLED
    await states.end_rejection(rejected)  # a late record never hides the cancellation
    assert await states.get(rejected) is OrderState.CANCELLED

    confirmed = uuid.uuid4().hex
    assert await states.begin_confirmation(confirmed, other_claim) is OrderState.NONE
    await states.end_confirmation(confirmed)
    assert await states.begin_rejection(confirmed, claim) is OrderState.CONFIRMED
    assert await states.get(confirmed) is OrderState.CONFIRMED

    # A rejection sender that died mid-send: its claim gone, the cancellation goes ahead.
    crashed = uuid.uuid4().hex
    dead_claim = store.key(EVENT_STOCK_REJECTED, uuid.uuid4().hex)
    assert await states.begin_rejection(crashed, dead_claim) is OrderState.NONE
    assert await states.begin_cancellation(crashed) is OrderState.NONE
    assert await states.begin_rejection(crashed, dead_claim) is OrderState.CANCELLED
