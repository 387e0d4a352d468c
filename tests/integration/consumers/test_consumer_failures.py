"""Failures around the consumers: poison messages go to the DLQ without stalling the partition,
infrastructure outages are waited out (never the DLQ, never a duplicate), a crash before the
commit is absorbed, and an operator's replay takes effect once."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from functools import partial

import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from services.email.handlers import FAILPOINT_AFTER_SMTP_OK
from shared.consumer import FAILPOINT_AFTER_MARK_DONE, FAILPOINT_AFTER_SIDE_EFFECT
from shared.contracts import (
    EVENT_ORDER_CREATED,
    EVENT_STOCK_RESERVED,
    IDEMPOTENCY_TTL_SECONDS,
    Header,
    idempotency_key,
)
from shared.dlq import StoredDlqRecord
from shared.dlq.__main__ import DlqSettings, format_table, replay, select
from shared.kafka import decode_headers, ensure_topics
from stack import Stack
from stack.config import free_port
from tests.integration.consumers.conftest import (
    Pipeline,
    order_event,
    poison_values,
    reserved_event,
)
from tests.waiting import wait_until

TIMEOUT = 60
# The outage: long enough for many failed attempts with backoff on both consumers.
REDIS_OUTAGE_SECONDS = 10
SMTP_OUTAGE_SECONDS = 4
# A killed replay's claim blocks a new replay this long (the production default is a minute).
REPLAY_CLAIM_SECONDS = 6


async def _done(p: Pipeline, event_id: str, service: str) -> bool:
    # Inventory acts on the order's creation, email on inventory's verdict.
    event_type = EVENT_STOCK_RESERVED if service == "email" else EVENT_ORDER_CREATED
    key = idempotency_key(service, event_type, event_id)
    return bool(await p.redis.get(key) == b"done")


async def test_each_poison_kind_lands_in_the_dlq_and_the_next_message_flows(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    p.start("inventory")  # email's poison verdict: test_email_follows_the_verdict.py
    key = "poison-key"
    good = order_event()
    sent = {}
    for kind, value, fragment in poison_values(good):
        sent[kind] = (await p.send(good, value=value, key=key), fragment)
    await p.send(good, event_id=None, key=key)  # valid value, no idempotencyKey header
    good_id = await p.send(good, key=key)  # same key, same partition: behind all the poison

    await wait_until(lambda: _done(p, good_id, "inventory"), timeout=TIMEOUT, message="inventory")
    group = p.inventory_group
    records = await wait_until(
        partial(_six, p, group), timeout=TIMEOUT, message=f"DLQ records of {group}"
    )
    by_event = {r.headers.get(Header.IDEMPOTENCY_KEY): r for r in records}
    for kind, (event_id, fragment) in sent.items():
        reason = by_event[event_id].headers[Header.FAILURE_REASON]
        assert reason.startswith("PoisonMessage: ") and fragment in reason, kind
    missing = by_event[None].headers[Header.FAILURE_REASON]
    assert "missing idempotencyKey header" in missing
    for record in records:
        h = record.headers
        assert record.key == key.encode()
        assert h[Header.RETRY_COUNT] == "0"
        assert h[Header.ORIGINAL_TOPIC] == p.topic
        assert h[Header.CONSUMER_GROUP] == group
        assert h[Header.EVENT_TYPE] == EVENT_ORDER_CREATED
        assert int(h[Header.ORIGINAL_OFFSET]) >= 0 and Header.FAILED_AT in h
    assert len(await p.reservations(good.order_id)) == 1


async def _six(p: Pipeline, group: str) -> list[StoredDlqRecord]:
    records = await p.dlq(group)
    if len(records) != 6:
        raise AssertionError(f"{len(records)} DLQ records of {group} so far")
    return records


async def test_redis_outage_is_waited_out_without_dlq_or_duplicate(
    pipeline: Pipeline, stack: Stack
) -> None:
    p = pipeline
    p.start()
    warm = await p.send_verdict(reserved_event(order_event()))
    await wait_until(lambda: _done(p, warm, "email"), timeout=TIMEOUT, message="warm-up")
    event = order_event(sku="SKU-2", quantity=1)
    stack.stop("redis")
    try:
        event_id = await p.send(event)
        verdict_id = await p.send_verdict(reserved_event(event))
        await asyncio.sleep(REDIS_OUTAGE_SECONDS)  # the outage itself, not a synchronisation
        assert p.emails_for(verdict_id) == []  # nothing happened without a claim
    finally:
        stack.start("redis")
    await wait_until(lambda: _done(p, event_id, "inventory"), timeout=TIMEOUT, message="inv")
    await wait_until(lambda: _done(p, verdict_id, "email"), timeout=TIMEOUT, message="email")
    assert len(await p.reservations(event.order_id)) == 1
    assert len(p.emails_for(verdict_id)) == 1
    assert await p.available("SKU-2") == 99
    assert await p.dlq() == []


async def test_email_retries_while_the_smtp_sink_is_down_and_delivers_after(
    pipeline: Pipeline, stack: Stack
) -> None:
    p = pipeline
    p.start("email")
    stack.stop("smtp")
    try:
        event_id = await p.send_verdict(reserved_event(order_event()))
        # The outage itself (not a synchronisation): several failed attempts with backoff.
        await asyncio.sleep(SMTP_OUTAGE_SECONDS)
        assert not await _done(p, event_id, "email")
    finally:
        stack.start("smtp")
    await wait_until(lambda: _done(p, event_id, "email"), timeout=TIMEOUT, message="delivered")
    assert len(p.emails_for(event_id)) == 1
    assert await p.dlq() == []


def _dlq_settings(p: Pipeline) -> DlqSettings:
    c = p.stack.config
    return DlqSettings(
        kafka_bootstrap_servers=c.kafka_bootstrap, redis_url=c.redis_url, topic=p.dlq_topic
    )


async def test_a_replay_takes_effect_only_in_the_group_that_dead_lettered_it(
    pipeline: Pipeline,
) -> None:
    """Inventory dead-lettered the event on Friday; Monday's replay reserves once, and a second
    replay is refused. (Email reads inventory's verdicts, not this topic: its replays are in
    test_email_sends_once.py.)"""
    p = pipeline
    event = order_event(sku="SKU-3", quantity=2)
    event_id = "evt-replay-" + event.order_id
    await p.dead_letter(event, event_id, group=p.inventory_group)
    settings = _dlq_settings(p)
    stored = select(await p.dlq(), group=p.inventory_group)
    assert len(stored) == 1 and stored[0].ref in format_table(stored)

    out = io.StringIO()
    assert await replay(settings, stored, dry_run=True, out=out) == 1
    assert "would replay" in out.getvalue()
    assert await replay(settings, stored, dry_run=False, out=out) == 1
    assert await replay(settings, stored, dry_run=False, out=out) == 0
    assert "already replayed" in out.getvalue()

    p.start("inventory")
    marker_id = await p.send(order_event(), key=event.order_id)  # same partition, behind it
    await wait_until(partial(_done, p, marker_id, "inventory"), timeout=TIMEOUT, message="inv")
    [reservation] = await p.reservations(event.order_id)
    assert reservation["status"] == "reserved"
    assert await p.available("SKU-3") == 98
    ledger_ttl = await p.redis.ttl(stored[0].ledger_key())
    assert ledger_ttl > IDEMPOTENCY_TTL_SECONDS  # outlives the dedup keys: no second replay


async def test_a_replay_killed_between_claim_and_send_leaves_the_record_replayable(
    pipeline: Pipeline,
) -> None:
    """kill -9 of `python -m shared.dlq replay` while its send is in flight (the target topic does
    not exist yet, so the send waits for metadata): the record is not "already replayed"; once
    the dead run's short claim expires a new replay sends it, once."""
    p = pipeline
    target = f"{p.topic}.replay-target"  # created only after the kill
    event = order_event()
    event_id = "evt-killed-replay-" + event.order_id
    await p.dead_letter(event, event_id, group=p.inventory_group, target=target)
    [record] = await p.dlq(p.inventory_group)
    ledger = record.ledger_key()
    c = p.stack.config
    env = {
        **os.environ,
        **c.service_env(),
        "DLQ_TOPIC": p.dlq_topic,
        "DLQ_REPLAY_CLAIM_SECONDS": str(REPLAY_CLAIM_SECONDS),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "shared.dlq", "replay", "--offset", record.ref),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: p.redis.exists(ledger), timeout=TIMEOUT, message="the claim")
    finally:
        process.kill()
        await process.wait()
    await ensure_topics(c.kafka_bootstrap, [target], 1)

    out = io.StringIO()
    await replay(_dlq_settings(p), [record], dry_run=True, out=out)
    assert "already replayed" not in out.getvalue()

    async def replayed_once() -> bool:
        return await replay(_dlq_settings(p), [record], dry_run=False, out=out) == 1

    await wait_until(replayed_once, timeout=TIMEOUT, interval=0.5, message="the replay")
    assert await replay(_dlq_settings(p), [record], dry_run=False, out=out) == 0
    assert "already replayed" in out.getvalue()
    [copy] = await _read_topic(c.kafka_bootstrap, target)
    headers = decode_headers(copy.headers)
    assert headers[Header.IDEMPOTENCY_KEY] == event_id
    assert headers[Header.REPLAYED_FROM] == record.ref
    assert headers[Header.REPLAY_FOR] == p.inventory_group


async def _read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a one-partition ``topic``, read without a group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records: list[ConsumerRecord[bytes, bytes]] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1_000)
            records.extend(batch.get(tp, []))
        return records
    finally:
        await consumer.stop()


async def _wait_exit(stack: Stack, name: str) -> None:
    await wait_until(lambda: not stack.is_running(name), timeout=TIMEOUT, message=f"{name} exit")


async def test_inventory_crash_after_reserving_before_marking_reserves_once(
    pipeline: Pipeline, stack: Stack
) -> None:
    """Crash after the MongoDB commit, before `done` and the offset commit: the restarted
    process redelivers; the unique orderId keeps it to one reservation."""
    p = pipeline
    env = {**p.env(), "INVENTORY_CLAIM_LEASE_SECONDS": "2"}
    event = order_event(sku="SKU-1", quantity=7)
    stack.start("inventory", env={**env, "INVENTORY_FAILPOINT": FAILPOINT_AFTER_SIDE_EFFECT})
    try:
        event_id = await p.send(event)
        await _wait_exit(stack, "inventory")
        assert len(await p.reservations(event.order_id)) == 1
        assert not await _done(p, event_id, "inventory")
        stack.start("inventory", env=env)
        await wait_until(lambda: _done(p, event_id, "inventory"), timeout=TIMEOUT, message="redo")
    finally:
        stack.stop("inventory")
    assert len(await p.reservations(event.order_id)) == 1
    assert await p.available("SKU-1") == 93


async def test_email_crash_after_marking_before_commit_sends_once(
    pipeline: Pipeline, stack: Stack
) -> None:
    p = pipeline
    event = reserved_event(order_event())
    stack.start("email", env={**p.env(), "EMAIL_FAILPOINT": FAILPOINT_AFTER_MARK_DONE})
    try:
        event_id = await p.send_verdict(event)
        await _wait_exit(stack, "email")
        stack.start("email", env=p.env())
        # Same key, same partition, behind the redelivered record: "marker done" proves the
        # restarted consumer has consumed (and skipped) the redelivery first.
        marker_id = await p.send_verdict(event)
        await wait_until(lambda: _done(p, marker_id, "email"), timeout=TIMEOUT, message="marker")
    finally:
        stack.stop("email")
    assert len(p.emails_for(event_id)) == 1


async def test_email_crash_between_smtp_ok_and_done_is_the_one_duplicate_window(
    pipeline: Pipeline, stack: Stack
) -> None:
    """Documented, not hidden: a crash after SMTP's 250 and before the send is recorded sends a
    second copy, with the same Message-ID so the copy is recognisable."""
    p = pipeline
    env = {**p.env(), "EMAIL_CLAIM_LEASE_SECONDS": "2"}
    stack.start("email", env={**env, "EMAIL_FAILPOINT": FAILPOINT_AFTER_SMTP_OK})
    try:
        event_id = await p.send_verdict(reserved_event(order_event()))
        await _wait_exit(stack, "email")
        stack.start("email", env=env)
        await wait_until(lambda: _done(p, event_id, "email"), timeout=TIMEOUT, message="resend")
    finally:
        stack.stop("email")
    copies = p.emails_for(event_id)
    assert len(copies) == 2
    assert copies[0]["Message-ID"] == copies[1]["Message-ID"]


async def test_sigterm_drains_commits_and_exits_zero(pipeline: Pipeline, stack: Stack) -> None:
    p = pipeline
    port = free_port()
    env = {**os.environ, **stack.config.service_env(), **p.env(), "INVENTORY_PORT": str(port)}
    for run in range(2):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.inventory",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await wait_until(lambda: _ready(port), timeout=TIMEOUT, message="ready")
            event_id = await p.send(order_event())
            await wait_until(
                partial(_done, p, event_id, "inventory"), timeout=TIMEOUT, message="processed"
            )
            metrics = await _get(port, "/metrics")
            # The second process starts from the committed offsets: nothing redelivered.
            assert 'consumer_duplicates_skipped_total{service="inventory"} 0.0' in metrics, run
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), timeout=35) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _get(port: int, path: str) -> str:
    async with httpx.AsyncClient(timeout=3) as client:
        response = await client.get(f"http://127.0.0.1:{port}{path}")
        return response.text


async def _ready(port: int) -> bool:
    async with httpx.AsyncClient(timeout=3) as client:
        return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
