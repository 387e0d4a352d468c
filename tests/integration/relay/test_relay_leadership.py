"""More than one relay: exactly one leads, a standby takes over when the leader dies, a clean
SIGTERM hands over at once, and a zombie leader is fenced by Kafka."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aiokafka.errors import KafkaError
from bson import ObjectId

from services.relay.lease import LEASE_ID
from shared.contracts import ORDER_CREATED_TOPIC
from shared.kafka import make_producer
from tests.integration.relay.relay_world import RelayWorld, running_relay
from tests.waiting import wait_until


async def leader_of(world: RelayWorld) -> str | None:
    doc = await world.db["relay_lease"].find_one({"_id": LEASE_ID})
    return None if doc is None else str(doc["owner"])


async def test_standby_takes_over_within_the_lease_time_when_the_leader_is_killed(
    world: RelayWorld,
) -> None:
    first = await world.start_process("a")
    second = await world.start_process("b")
    aggregates = [str(ObjectId()) for _ in range(60)]
    before = [await world.insert(agg, 1) for agg in aggregates[:30]]
    await world.wait_published(before, within=30)
    leader = await leader_of(world)
    assert leader in (first, second)
    standby = second if leader == first else first

    await asyncio.to_thread(world.stack.kill, leader)
    killed_at = time.monotonic()
    after = [await world.insert(agg, 1) for agg in aggregates[30:]]
    await wait_until(lambda: owner_is(world, standby), timeout=15, message="standby took the lease")
    await world.wait_published(after, within=30)
    # Lease TTL is 3 s in these tests; the sweep and a renewal interval add a little.
    assert time.monotonic() - killed_at < 3 + 1 + 5

    records = await world.read_records(aggregates, at_least=len(aggregates))
    assert set(Counter(r.event_id for r in records)) == {str(i) for i in before + after}


async def owner_is(world: RelayWorld, instance: str) -> bool:
    return await leader_of(world) == instance


async def test_sigterm_finishes_the_batch_releases_the_lease_and_exits_zero(
    world: RelayWorld,
) -> None:
    instance = await world.start_process("term")
    ids = [await world.insert(str(ObjectId()), 1) for _ in range(20)]
    await world.wait_published(ids, within=30)
    code = await asyncio.to_thread(world.stack.stop, instance)
    doc = await world.db["relay_lease"].find_one({"_id": LEASE_ID})
    assert doc["expiresAt"].year == 1970  # released, not left to expire
    assert code == 0  # a real exit code: this Stack started the process and waited for it


async def test_only_one_of_two_relays_leads(world: RelayWorld) -> None:
    async with (
        running_relay(world.settings(instance_id="one")) as one,
        running_relay(world.settings(instance_id="two")) as two,
    ):
        await wait_until(
            lambda: one.lease.is_held() or two.lease.is_held(), timeout=15, message="a leader"
        )
        ids = [await world.insert(str(ObjectId()), 1) for _ in range(10)]
        await world.wait_published(ids, within=30)
        assert one.lease.is_held() != two.lease.is_held()
        assert one.metrics.is_leader._value.get() + two.metrics.is_leader._value.get() == 1


async def test_a_new_producer_with_the_shared_transactional_id_fences_the_old_one(
    world: RelayWorld,
) -> None:
    bootstrap = world.stack.config.kafka_bootstrap
    zombie = make_producer(bootstrap, transactional_id=world.transactional_id)
    await zombie.start()
    successor = make_producer(bootstrap, transactional_id=world.transactional_id)
    try:
        await zombie.begin_transaction()
        key = f"zombie-{world.database}".encode()
        await zombie.send_and_wait(ORDER_CREATED_TOPIC, b"zombie", key=key)
        await successor.start()
        await successor.begin_transaction()  # initialising bumps the epoch: the zombie is fenced
        with pytest.raises(KafkaError):
            await asyncio.wait_for(zombie.commit_transaction(), timeout=20)
        await successor.abort_transaction()
    finally:
        for producer in (zombie, successor):
            await asyncio.wait_for(producer.stop(), timeout=20)
