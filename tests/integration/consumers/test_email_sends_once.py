"""The email service's promises on real servers: one email per event whatever Redis does after
the SMTP server said 250 (only a crash in that instant sends a copy), and no confirmation for a
cancelled order however late its verdict is replayed from the DLQ."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from email.message import EmailMessage
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from services.email.handlers import SERVICE as EMAIL
from services.email.handlers import ConfirmationSender
from services.email.main import run as run_email
from services.email.order_state import OrderState, OrderStates
from shared.consumer import FAILPOINT_AFTER_SIDE_EFFECT
from shared.contracts import (
    AGGREGATE_RESERVATION,
    EVENT_ORDER_CANCELLED,
    EVENT_STOCK_RESERVED,
    IDEMPOTENCY_TTL_SECONDS,
    ORDER_STATE_TTL_SECONDS,
    dlq_topic_for,
    idempotency_key,
)
from shared.dlq import (
    REPLAY_LEDGER_MARGIN_SECONDS,
    build_dlq_record,
    replay_ledger_ttl,
    send_to_dlq,
)
from shared.dlq.__main__ import DlqSettings, replay
from shared.events import StockReserved
from stack import Stack
from tests.cuttable_proxy import CuttableProxy
from tests.integration.consumers.conftest import (
    Pipeline,
    cancel_event,
    event_headers,
    order_event,
    reserved_event,
)
from tests.waiting import wait_until

TIMEOUT = 60
# Failed attempts to wait for while Redis is cut: the first fails on the write after the 250,
# the later ones on the claim itself; by then the 2 s claim lease has run out too.
FAILED_ATTEMPTS_DURING_THE_CUT = 3
SHORT_LEASE_SECONDS = 2


async def _done(p: Pipeline, event_type: str, event_id: str) -> bool:
    return bool(await p.redis.get(idempotency_key(EMAIL, event_type, event_id)) == b"done")


def _failed_attempts(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == "shared.consumer" and r.getMessage() == "attempt failed, retrying"
    )


async def test_a_redis_cut_right_after_the_smtp_ok_retries_the_record_not_the_send(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SMTP answers 250, and Redis is gone before the send is recorded: the consumer retries
    while Redis is away and, once it is back, records the send; it never sends a second copy."""
    p = pipeline
    redis_address = urlsplit(p.stack.config.redis_url)
    assert redis_address.hostname and redis_address.port
    async with CuttableProxy(redis_address.hostname, redis_address.port) as proxy:
        smtp_ok = asyncio.Event()
        send = ConfirmationSender._send

        async def send_then_cut_redis(
            sender: ConfirmationSender, message: EmailMessage, claim: str
        ) -> None:
            await send(sender, message, claim)  # returned: the server said 250
            if not smtp_ok.is_set():
                proxy.cut.set()
                smtp_ok.set()

        monkeypatch.setattr(ConfirmationSender, "_send", send_then_cut_redis)
        settings = p.email_settings(claim_lease_seconds=SHORT_LEASE_SECONDS).model_copy(
            update={"redis_url": f"redis://127.0.0.1:{proxy.port}/0"}
        )
        stop = asyncio.Event()
        p.tasks["email"] = (asyncio.create_task(run_email(settings, stop=stop)), stop)
        with caplog.at_level(logging.WARNING, logger="shared.consumer"):
            event = reserved_event(order_event())
            event_id = await p.send_verdict(event)
            await wait_until(smtp_ok.is_set, timeout=TIMEOUT, message="the SMTP 250")
            await wait_until(
                lambda: _failed_attempts(caplog) >= FAILED_ATTEMPTS_DURING_THE_CUT,
                timeout=TIMEOUT,
                message=f"{FAILED_ATTEMPTS_DURING_THE_CUT} failed attempts while Redis is cut",
            )
            assert not await _done(p, EVENT_STOCK_RESERVED, event_id)
            proxy.cut.clear()
            await wait_until(
                lambda: _done(p, EVENT_STOCK_RESERVED, event_id),
                timeout=TIMEOUT,
                message="the send recorded once Redis is back",
            )
        await p.stop("email")
    assert len(p.emails_for(event_id)) == 1
    assert await OrderStates(p.redis, EMAIL).get(event.order_id) is OrderState.CONFIRMED
    assert await p.dlq() == []


async def test_a_crash_after_the_send_is_recorded_never_sends_again(
    pipeline: Pipeline, stack: Stack
) -> None:
    """Killed after the order's state says ``confirmed`` and before the dedup key says ``done``:
    the redelivery finds the send recorded and does not repeat it."""
    p = pipeline
    env = {**p.env(), "EMAIL_CLAIM_LEASE_SECONDS": str(SHORT_LEASE_SECONDS)}
    stack.start("email", env={**env, "EMAIL_FAILPOINT": FAILPOINT_AFTER_SIDE_EFFECT})
    try:
        event_id = await p.send_verdict(reserved_event(order_event()))
        await wait_until(
            lambda: not stack.is_running("email"), timeout=TIMEOUT, message="email exit"
        )
        assert not await _done(p, EVENT_STOCK_RESERVED, event_id)
        stack.start("email", env=env)
        await wait_until(
            lambda: _done(p, EVENT_STOCK_RESERVED, event_id), timeout=TIMEOUT, message="redelivery"
        )
    finally:
        stack.stop("email")
    assert len(p.emails_for(event_id)) == 1


async def _let_time_pass(redis: Redis, seconds: int, *keys: str) -> None:
    """What ``seconds`` of wall-clock time do to ``keys``: a key that expires sooner is gone,
    the others have that much less to live."""
    for key in keys:
        left_ms = await redis.pttl(key)
        if left_ms < 0:
            continue  # -2: no such key; -1: kept for good
        if left_ms <= seconds * 1000:
            await redis.delete(key)
        else:
            await redis.pexpire(key, left_ms - seconds * 1000)


async def test_a_confirmation_replayed_as_late_as_the_dlq_allows_is_not_sent_for_a_cancelled_order(
    pipeline: Pipeline,
) -> None:
    """Email gave up on a confirmation (dead-lettered it); the order was cancelled meanwhile. An
    operator replays the confirmation just before the DLQ topic drops it, long after the 48 h
    dedup keys expired: the customer, told the order was cancelled, gets no confirmation."""
    p = pipeline
    p.start("email")
    created = order_event()
    created_id = "evt-late-replay-" + created.order_id
    await _dead_letter_the_confirmation(p, reserved_event(created), created_id)
    cancel_id = await p.send_cancel(cancel_event(created))
    await wait_until(
        lambda: _done(p, EVENT_ORDER_CANCELLED, cancel_id), timeout=TIMEOUT, message="the cancel"
    )
    state_key = OrderStates(p.redis, EMAIL).key(created.order_id)
    state_ttl = await p.redis.ttl(state_key)

    dlq_topic = dlq_topic_for(p.reserved_topic)
    ledger_ttl = await replay_ledger_ttl(p.stack.config.kafka_bootstrap, dlq_topic)
    assert ledger_ttl is not None, "the test's DLQ topic keeps its records for a bounded time"
    dlq_retention = ledger_ttl - REPLAY_LEDGER_MARGIN_SECONDS
    # The last moment the record can still be replayed: its retention after it was written.
    await _let_time_pass(
        p.redis,
        dlq_retention,
        state_key,
        idempotency_key(EMAIL, EVENT_ORDER_CANCELLED, cancel_id),
        idempotency_key(EMAIL, EVENT_STOCK_RESERVED, created_id),
    )
    c = p.stack.config
    settings = DlqSettings(
        kafka_bootstrap_servers=c.kafka_bootstrap, redis_url=c.redis_url, topic=dlq_topic
    )
    dead = await p.dlq(p.email_group, source_topic=p.reserved_topic)
    assert await replay(settings, dead, dry_run=False, out=io.StringIO()) == 1
    await wait_until(
        lambda: _done(p, EVENT_STOCK_RESERVED, created_id),
        timeout=TIMEOUT,
        message="the replayed confirmation handled",
    )
    assert p.subjects_for(created.order_id) == [f"Order {created.order_id} cancelled"]
    assert state_ttl >= dlq_retention


async def _dead_letter_the_confirmation(p: Pipeline, event: StockReserved, event_id: str) -> None:
    """What email writes to the verdict topic's DLQ when the SMTP server refuses the
    confirmation three times."""
    record = build_dlq_record(
        topic=p.reserved_topic,
        partition=0,
        offset=42,
        key=event.order_id.encode(),
        value=event.to_json().encode(),
        headers=event_headers(
            event_id,
            event.order_id,
            event_type=EVENT_STOCK_RESERVED,
            aggregate_type=AGGREGATE_RESERVATION,
        ),
        reason="SMTPDataError: (554, 'relay refused')",
        retry_count=2,
        consumer_group=p.email_group,
    )
    await send_to_dlq(p.producer, dlq_topic_for(p.reserved_topic), record)


async def test_the_order_state_records_each_send_for_longer_than_the_dedup_keys(
    pipeline: Pipeline,
) -> None:
    """The state scripts on the real Redis: a recorded send stops every later attempt of the
    same email, a record survives a lost state, and a cancellation is never overwritten."""
    redis = pipeline.redis
    states = OrderStates(redis, f"email-{uuid.uuid4().hex[:6]}")
    order_id, claim = uuid.uuid4().hex, f"idem:email-test:stock_reserved:{uuid.uuid4().hex}"

    assert await states.begin_confirmation(order_id, claim) is OrderState.NONE
    await states.end_confirmation(order_id)
    assert await states.begin_confirmation(order_id, claim) is OrderState.CONFIRMED
    assert await states.get(order_id) is OrderState.CONFIRMED
    await redis.delete(states.key(order_id))  # the state lost while the mail was on its way
    await states.end_confirmation(order_id)
    assert await states.get(order_id) is OrderState.CONFIRMED
    assert await redis.ttl(states.key(order_id)) > IDEMPOTENCY_TTL_SECONDS

    assert await states.begin_cancellation(order_id) is OrderState.CONFIRMED
    await states.end_cancellation(order_id)
    assert await states.begin_cancellation(order_id) is OrderState.CANCELLATION_SENT
    assert await states.begin_confirmation(order_id, claim) is OrderState.CANCELLATION_SENT
    await states.end_confirmation(order_id)  # a late record never hides the cancellation
    assert await states.get(order_id) is OrderState.CANCELLATION_SENT
    assert await redis.ttl(states.key(order_id)) >= ORDER_STATE_TTL_SECONDS - 120
