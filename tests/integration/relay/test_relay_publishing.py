"""The relay publishes every outbox event, in per-aggregate order, promptly, with the contract's
record shape, and it keeps that promise across a restart and a broker outage."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import httpx
from bson import ObjectId

from services.relay.wakeup import TOKEN_COLLECTION, TOKEN_ID
from shared.contracts import ORDER_CREATED_TOPIC, OutboxStatus
from shared.outbox import OutboxField
from tests.integration.relay.relay_world import (
    RelayWorld,
    by_key,
    first_occurrences,
    running_relay,
)
from tests.waiting import wait_until


async def test_relay_publishes_each_event_with_its_key_and_idempotency_key(
    world: RelayWorld,
) -> None:
    aggregates = [str(ObjectId()) for _ in range(5)]
    async with running_relay(world.settings()):
        ids = [await world.insert(agg, 1) for agg in aggregates]
        await world.wait_published(ids, within=20)
    records = await world.read_records(aggregates, at_least=5)
    assert {r.key for r in records} == set(aggregates)
    assert {r.event_id for r in records} == {str(i) for i in ids}
    doc = await world.outbox.find_one({"_id": ids[0]})
    assert doc["publishedAt"] is not None and doc["status"] == OutboxStatus.PUBLISHED.value


async def test_each_published_event_records_the_partition_and_offset_of_its_kafka_record(
    world: RelayWorld,
) -> None:
    # Several aggregates (so several partitions), one of them with two versions in one batch.
    aggregates = [str(ObjectId()) for _ in range(6)]
    async with running_relay(world.settings()):
        ids = [await world.insert(agg, 1) for agg in aggregates]
        ids.append(await world.insert(aggregates[0], 2))
        await world.wait_published(ids, within=20)
    records = await world.read_records(aggregates, at_least=len(ids))
    placed = {r.event_id: (ORDER_CREATED_TOPIC, r.partition, r.offset) for r in records}
    assert len(records) == len(placed) == len(ids), records  # one record per event
    async for doc in world.outbox.find({"_id": {"$in": ids}}):
        f = OutboxField
        recorded = (doc[f.KAFKA_TOPIC], doc[f.KAFKA_PARTITION], doc[f.KAFKA_OFFSET])
        assert recorded == placed[str(doc["_id"])], doc


async def test_a_new_event_is_published_by_the_change_stream_not_the_sweep(
    world: RelayWorld,
) -> None:
    # A sweep every 60 s, and proof by the loop's own account of what woke it: the round that
    # published the event began when an insert notification ended an idle wait.
    async with running_relay(world.settings(sweep_interval_seconds=60)) as relay:
        wakeups = relay.metrics.wakeups
        await wait_until(lambda: relay.owned_slots(), timeout=15, message="leadership")
        await wait_until(
            lambda: wakeups.labels(source="stream_opened")._value.get() >= 1,
            timeout=15,
            message="change stream open",
        )
        # Idle: nothing in flight, the next round can only start from a wake-up or the sweep.
        await wait_until(lambda: relay.idle, timeout=15, message="publish loop idle")
        before = {s: wakeups.labels(source=s)._value.get() for s in _SOURCES}
        event_id = await world.insert(str(ObjectId()), 1)
        await world.wait_published([event_id], within=5)
        after = {s: wakeups.labels(source=s)._value.get() for s in _SOURCES}
        assert after["change_stream"] >= before["change_stream"] + 1
        assert (after["sweep"], after["stream_opened"]) == (
            before["sweep"],
            before["stream_opened"],
        )
        await wait_until(
            lambda: world.db[TOKEN_COLLECTION].find_one({"_id": TOKEN_ID}),
            timeout=10,
            message="resume token saved",
        )


_SOURCES = ("change_stream", "stream_opened", "sweep")


async def test_an_unusable_resume_token_is_dropped_and_the_stream_reopened(
    world: RelayWorld,
) -> None:
    await world.db[TOKEN_COLLECTION].insert_one(
        {"_id": TOKEN_ID, "token": {"_data": "00DEADBEEF"}, "savedAt": datetime.now(UTC)}
    )
    async with running_relay(world.settings(sweep_interval_seconds=60)) as relay:
        await wait_until(lambda: relay.owned_slots(), timeout=15, message="leadership")
        # The first sweep after leadership may publish it too; insert after the stream reopened.
        await wait_until(
            _token_not_garbage(world), timeout=15, message="garbage token dropped or replaced"
        )
        event_id = await world.insert(str(ObjectId()), 1)
        await world.wait_published([event_id], within=5)


def _token_not_garbage(world: RelayWorld):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        doc = await world.db[TOKEN_COLLECTION].find_one({"_id": TOKEN_ID})
        return doc is None or doc["token"] != {"_data": "00DEADBEEF"}

    return check


async def test_one_aggregate_is_published_in_version_order_even_if_created_out_of_order(
    world: RelayWorld,
) -> None:
    # Small batches and shuffled createdAt: a batch often holds v3 without v1, which must then
    # be pulled in first (or the batch held back), never sent ahead of it.
    aggregates = [str(ObjectId()) for _ in range(20)]
    base = datetime.now(UTC)
    docs = []
    for agg in aggregates:
        for version in range(1, 6):
            created = base + timedelta(milliseconds=random.randint(0, 5000))
            docs.append(world.event_doc(ObjectId(), agg, version, created_at=created))
    random.shuffle(docs)
    await world.outbox.insert_many(docs)
    async with running_relay(world.settings(batch_size=7)):
        await world.wait_published([d["_id"] for d in docs], within=60)
    records = await world.read_records(aggregates, at_least=len(docs))
    for agg, versions in by_key(records).items():
        assert first_occurrences(versions) == [1, 2, 3, 4, 5], agg


async def test_order_survives_a_relay_restart_and_a_broker_outage(world: RelayWorld) -> None:
    aggregates = [str(ObjectId()) for _ in range(30)]
    versions_per_aggregate = 6
    ids: list[ObjectId] = []

    async def write_versions(first: int, last: int) -> None:
        docs = [
            world.event_doc(ObjectId(), agg, v)
            for v in range(first, last + 1)
            for agg in aggregates
        ]
        await world.outbox.insert_many(docs)
        ids.extend(d["_id"] for d in docs)

    instance = await world.start_process("order", RELAY_BATCH_SIZE="50")
    await write_versions(1, 2)
    await world.wait_published(ids, within=60)

    # Restart (stack.restart would drop this test's env): the new process resumes from the
    # outbox alone.
    await asyncio.to_thread(world.stack.stop, instance)
    await world.start_process("order", RELAY_BATCH_SIZE="50")
    await write_versions(3, 4)
    await world.wait_published(ids, within=60)

    # Broker away: events stay Pending with the lost rounds and lastError on record, the relay
    # stays up, and the outage does not spend the events' budget (attempts stays 0).
    await asyncio.to_thread(world.stack.stop, "kafka")
    try:
        await write_versions(5, versions_per_aggregate)
        pending = ids[-len(aggregates) * 2 :]

        async def rounds_recorded() -> bool:
            doc = await world.outbox.find_one({"_id": pending[0]})
            return bool(doc and doc.get("transientAttempts", 0) >= 2 and doc["lastError"])

        await wait_until(rounds_recorded, timeout=60, message="lost rounds/lastError recorded")
        docs = await world.outbox.find({"_id": {"$in": pending}}).to_list()
        assert {d["status"] for d in docs} == {OutboxStatus.PENDING.value}
        assert {d["attempts"] for d in docs} == {0}
        port = world.stack.port_of(instance)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'relay_publish_errors_total{kind="transient"}' in metrics
    finally:
        await asyncio.to_thread(world.stack.start, "kafka")
    await world.wait_published(ids, within=90)

    records = await world.read_records(aggregates, at_least=len(ids), within=60)
    assert {r.event_id for r in records} == {str(i) for i in ids}
    for agg, versions in by_key(records).items():
        assert first_occurrences(versions) == list(range(1, versions_per_aggregate + 1)), agg
