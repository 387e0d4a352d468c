"""Failures the relay survives: a crash between Kafka's ack and the mark (duplicates, no loss),
an event that can never be published (Failed, blocking only its aggregate, retried by CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from bson import Decimal128, ObjectId

from shared.contracts import ORDER_CREATED_TOPIC, OutboxStatus
from shared.lifecycle import FAILPOINT_EXIT_CODE
from tests.integration.relay.relay_world import (
    RelayWorld,
    by_key,
    first_occurrences,
    payload_for,
    running_relay,
)
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[3]
# Over the producer's and the broker's 1 MiB message limit.
OVERSIZED_PADDING = 1_100_000


async def test_a_crash_between_kafka_ack_and_mark_duplicates_events_but_never_loses_one(
    world: RelayWorld,
) -> None:
    aggregates = [str(ObjectId()) for _ in range(40)]
    docs = [world.event_doc(ObjectId(), agg, 1) for agg in aggregates]
    ids = [d["_id"] for d in docs]
    instance = await world.start_process("crash", RELAY_FAILPOINT="after_kafka_ack")
    await world.outbox.insert_many(docs)
    # The failpoint exits right after the first acknowledged batch, before marking it.
    await wait_until(
        lambda: not world.stack.is_running(instance), timeout=30, message="relay crashed"
    )
    # Exited where asked, not of something else (0, 1, 2, 137 and 143 mean other things).
    assert world.stack._exit_code(instance) == FAILPOINT_EXIT_CODE
    assert (
        await world.outbox.count_documents(
            {"_id": {"$in": ids}, "status": OutboxStatus.PUBLISHED.value}
        )
        == 0
    )
    await world.start_process("crash")  # same instance name, failpoint off
    await world.wait_published(ids, within=60)

    records = await world.read_records(aggregates, at_least=len(ids) + 1)
    copies = Counter(r.event_id for r in records)
    assert set(copies) == {str(i) for i in ids}  # nothing lost
    assert max(copies.values()) >= 2  # the crashed batch went out twice, same idempotencyKey


async def test_an_unpublishable_event_fails_and_blocks_only_its_own_aggregate(
    world: RelayWorld,
) -> None:
    stuck, free = str(ObjectId()), str(ObjectId())
    huge = await world.insert(stuck, 1, payload=payload_for(stuck, padding=OVERSIZED_PADDING))
    after_huge = await world.insert(stuck, 2)
    free_ids = [await world.insert(free, v) for v in (1, 2, 3)]
    async with running_relay(world.settings()) as relay:
        await world.wait_published(free_ids, within=30)

        async def huge_settled() -> bool:
            # Any status but Pending: the assertion below then says which one it must be.
            return await world.status_of(huge) != OutboxStatus.PENDING.value

        await wait_until(huge_settled, timeout=30, message="oversized event settled")
        doc = await world.outbox.find_one({"_id": huge})
        assert doc["status"] == OutboxStatus.FAILED.value
        assert "MessageSizeTooLarge" in doc["lastError"]
        assert doc.get("publishedAt") is None  # Failed never expires through the TTL index
        # The event behind it waits, however many sweeps go by.
        later = await world.insert(free, 4)
        await world.wait_published([later], within=30)
        assert await world.status_of(after_huge) == OutboxStatus.PENDING.value
        assert relay.metrics.events_failed._value.get() == 1

        # An operator fixes the payload and retries it: both go out, in order.
        await world.outbox.update_one({"_id": huge}, {"$set": {"payload": payload_for(stuck)}})
        code, out, err = await run_cli(world, "retry", str(huge))
        assert code == 0, err
        assert "put back to Pending" in out
        await world.wait_published([huge, after_huge], within=30)

    records = await world.read_records([stuck, free], at_least=6)
    versions = by_key(records)
    assert first_occurrences(versions[stuck]) == [1, 2]
    assert first_occurrences(versions[free]) == [1, 2, 3, 4]


async def test_retry_cli_explains_what_it_did_or_why_not(world: RelayWorld) -> None:
    agg = str(ObjectId())
    failed = [await world.insert(agg, v) for v in (1, 2)]
    await world.outbox.update_many({"_id": {"$in": failed}}, {"$set": {"status": "Failed"}})

    code, _, err = await run_cli(world, "retry", "not-an-id")
    assert code == 2 and "not an event id" in err
    code, _, err = await run_cli(world, "retry", str(ObjectId()))
    assert code == 1 and "no outbox event" in err
    code, out, _ = await run_cli(world, "retry", "--all-failed")
    assert code == 0 and "2 failed event(s) put back to Pending" in out
    code, _, err = await run_cli(world, "retry", str(failed[0]))
    assert code == 1 and "is Pending, not Failed" in err
    assert await world.outbox.count_documents({"status": "Pending", "attempts": 0}) == 2


async def run_cli(world: RelayWorld, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, **world.stack.config.service_env(), **world.env()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.relay",
        *args,
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_malformed_outbox_documents_become_failed_with_the_reason_and_the_rest_flows(
    world: RelayWorld,
) -> None:
    broken, healthy = str(ObjectId()), [str(ObjectId()) for _ in range(5)]
    bad_docs = {
        "aggregateVersion": world.event_doc(ObjectId(), broken, 1) | {"aggregateVersion": "v1"},
        "Decimal128": world.event_doc(ObjectId(), str(ObjectId()), 1)
        | {"aggregateVersion": Decimal128("1")},
        "aggregateId": {
            k: v for k, v in world.event_doc(ObjectId(), "x", 1).items() if k != "aggregateId"
        },
        "createdAt": world.event_doc(ObjectId(), str(ObjectId()), 1) | {"createdAt": "yesterday"},
    }
    await world.outbox.insert_many(list(bad_docs.values()))
    behind_broken = await world.insert(broken, 2)
    ids = [await world.insert(agg, 1) for agg in healthy]
    async with running_relay(world.settings()) as relay:
        await world.wait_published(ids, within=30)

        async def all_settled() -> bool:
            ids = [d["_id"] for d in bad_docs.values()]
            return bool(
                await world.outbox.count_documents(
                    {"_id": {"$in": ids}, "status": OutboxStatus.FAILED.value}
                )
                == len(ids)
            )

        await wait_until(all_settled, timeout=30, message="malformed documents Failed")
        for expected, doc in bad_docs.items():
            stored = await world.outbox.find_one({"_id": doc["_id"]})
            assert stored["lastError"].startswith("malformed:"), stored
            assert expected in stored["lastError"], stored
        # The relay still leads and publishes; the event behind the broken one waits for it.
        later = await world.insert(healthy[0], 2)
        await world.wait_published([later], within=30)
        assert relay.owned_slots() == set(range(world.slots))
        assert await world.status_of(behind_broken) == OutboxStatus.PENDING.value


async def test_one_non_retriable_error_on_every_record_parks_nothing_as_failed(
    world: RelayWorld,
) -> None:
    # The broker refuses every record (topic limit below any record): aiokafka fails every
    # future of each partition's batch with one non-retriable error. That says nothing about the
    # events: they must keep their budget and go out once the broker accepts them again.
    # Without transactions: a transaction marker must not meet the shrunken limit.
    aggregates = [str(ObjectId()) for _ in range(12)]
    ids = [await world.insert(agg, 1) for agg in aggregates]
    async with (
        topic_limit(world, ORDER_CREATED_TOPIC, "max.message.bytes", "100"),
        running_relay(world.settings(transactional_id="", max_attempts=2)),
    ):

        async def several_rounds_refused() -> bool:
            docs = await world.outbox.find({"_id": {"$in": ids}}).to_list()
            return all(d.get("transientAttempts", 0) >= 3 for d in docs)

        await wait_until(several_rounds_refused, timeout=60, message="three refused rounds")
        docs = await world.outbox.find({"_id": {"$in": ids}}).to_list()
        assert {d["status"] for d in docs} == {OutboxStatus.PENDING.value}
        assert {d["attempts"] for d in docs} == {0}
        assert all("MessageSizeTooLarge" in d["lastError"] for d in docs)
    async with running_relay(world.settings(transactional_id="", max_attempts=2)):
        await world.wait_published(ids, within=30)


@contextlib.asynccontextmanager
async def topic_limit(world: RelayWorld, topic: str, name: str, value: str) -> AsyncIterator[None]:
    """Override one config of ``topic`` for the block (restored to the broker default after)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=world.stack.config.kafka_bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {name: value})])
        try:
            yield
        finally:
            # Legacy AlterConfigs replaces the topic's whole override set: {} restores defaults.
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {})])
    finally:
        await admin.close()
