"""More than one relay for one slot (``RELAY_SLOTS=1``: the classic leader and standby): exactly
one leads, a standby takes over when the leader dies, a clean SIGTERM hands over at once, and a
zombie leader is fenced by Kafka and by its slot's fence. Sharing many slots among relays is in
test_relay_slots.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiokafka.errors import KafkaError
from bson import ObjectId

from services.console import views as console_views
from services.console.settings import ConsoleSettings
from services.relay.lease import LEASE_COLLECTION, fence_id, lease_id, transactional_id_for
from services.relay.members import MEMBERS_COLLECTION
from shared.contracts import ORDER_CREATED_TOPIC, OutboxStatus
from shared.kafka import make_producer
from tests.integration.relay.relay_world import (
    RelayWorld,
    by_key,
    first_occurrences,
    payload_for,
    running_relay,
)
from tests.waiting import wait_until

# The one slot of these tests.
SLOT = 0
LEASE_ID = lease_id(SLOT)


async def leader_of(world: RelayWorld) -> str | None:
    doc = await world.db[LEASE_COLLECTION].find_one({"_id": LEASE_ID})
    return None if doc is None else str(doc["owner"])


async def test_standby_takes_over_within_the_lease_time_when_the_leader_is_killed(
    world: RelayWorld,
) -> None:
    world.slots = 1
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
    # Every slot (the default 16): each one's lease is released, and the relay leaves the
    # membership, so the others take its share at once.
    instance = await world.start_process("term")
    ids = [await world.insert(str(ObjectId()), 1) for _ in range(20)]
    await world.wait_published(ids, within=30)
    code = await asyncio.to_thread(world.stack.stop, instance)
    leases = (
        await world.db[LEASE_COLLECTION]
        .find({"_id": {"$in": [lease_id(s) for s in range(world.slots)]}})
        .to_list()
    )
    assert len(leases) == world.slots
    assert {doc["expiresAt"].year for doc in leases} == {1970}  # released, not left to expire
    assert await world.db[MEMBERS_COLLECTION].find_one({"_id": instance}) is None
    assert code == 0  # a real exit code: this Stack started the process and waited for it


async def test_only_one_of_two_relays_leads(world: RelayWorld) -> None:
    world.slots = 1
    async with (
        running_relay(world.settings(instance_id="one")) as one,
        running_relay(world.settings(instance_id="two")) as two,
    ):
        await wait_until(lambda: one.holds(SLOT) or two.holds(SLOT), timeout=15, message="a leader")
        ids = [await world.insert(str(ObjectId()), 1) for _ in range(10)]
        await world.wait_published(ids, within=30)
        assert one.holds(SLOT) != two.holds(SLOT)
        assert one.metrics.is_leader._value.get() + two.metrics.is_leader._value.get() == 1


async def test_a_new_producer_with_the_shared_transactional_id_fences_the_old_one(
    world: RelayWorld,
) -> None:
    bootstrap = world.stack.config.kafka_bootstrap
    slot_id = transactional_id_for(world.transactional_id, SLOT)
    zombie = make_producer(bootstrap, transactional_id=slot_id)
    await zombie.start()
    successor = make_producer(bootstrap, transactional_id=slot_id)
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


async def test_a_deposed_leader_writes_no_status_at_all(world: RelayWorld) -> None:
    world.slots = 1
    # A long renewal interval: the relay cannot learn of the takeover from its lease renewal,
    # only from the fenced status write itself.
    settings = world.settings(instance_id="old", lease_ttl_seconds=60, lease_renew_seconds=20)
    async with running_relay(settings) as relay:
        await wait_until(lambda: relay.holds(SLOT), timeout=15, message="leadership")
        warm = await world.insert(str(ObjectId()), 1)
        await world.wait_published([warm], within=20)  # producer and change stream are up
        # Another relay takes the lease over (as after a pause of this one past its TTL).
        await world.db[LEASE_COLLECTION].update_one(
            {"_id": LEASE_ID},
            {
                "$set": {"owner": "usurper", "expiresAt": datetime.now(UTC) + timedelta(60)},
                "$inc": {"epoch": 1},
            },
        )
        healthy = await world.insert(str(ObjectId()), 1)
        oversized_agg = str(ObjectId())
        oversized = await world.insert(
            oversized_agg, 1, payload=payload_for(oversized_agg, padding=1_100_000)
        )
        await wait_until(
            lambda: relay.metrics.is_leader._value.get() == 0, timeout=20, message="stepped down"
        )
        for event_id in (healthy, oversized):
            doc = await world.outbox.find_one({"_id": event_id})
            assert doc["status"] == OutboxStatus.PENDING.value, doc
            assert (doc["attempts"], doc.get("transientAttempts"), doc["lastError"]) == (
                0,
                None,
                None,
            )
            assert doc["publishedAt"] is None and "relayEpoch" not in doc


async def test_fencing_reported_by_a_records_delivery_makes_the_relay_step_down(
    world: RelayWorld,
) -> None:
    world.slots = 1
    settings = world.settings(instance_id="zombie", lease_ttl_seconds=60, lease_renew_seconds=20)
    async with running_relay(settings) as relay:
        await wait_until(lambda: relay.holds(SLOT), timeout=15, message="leadership")
        warm = await world.insert(str(ObjectId()), 1)
        await world.wait_published([warm], within=20)
        lease = relay.lease_of(SLOT)
        assert lease is not None
        epoch = lease.epoch
        # A newer producer takes the slot's transactional id: the relay's next send is refused
        # by the broker, and aiokafka reports it through the records' futures.
        successor = make_producer(
            world.stack.config.kafka_bootstrap,
            transactional_id=transactional_id_for(world.transactional_id, SLOT),
        )
        await successor.start()
        await successor.stop()
        event_id = await world.insert(str(ObjectId()), 1)
        await world.wait_published([event_id], within=60)
        doc = await world.outbox.find_one({"_id": event_id})
        # Stepped down (a fencing error is not the event's fault and is not counted), then led
        # again under a new epoch since the lease was still its own.
        assert (doc["attempts"], doc.get("transientAttempts")) == (0, None)
        now = relay.lease_of(SLOT)
        assert now is not None and now.epoch is not None and epoch is not None
        assert now.epoch > epoch
        assert doc["relayEpoch"] == now.epoch


async def test_a_leader_paused_past_its_lease_steps_down_on_resume_and_writes_nothing(
    world: RelayWorld,
) -> None:
    world.slots = 1
    # Small batches over a backlog: the leader is in the middle of a round (records queued,
    # a transaction open, or a mark under way) at almost any instant it is paused.
    first = await world.start_process("paused", RELAY_BATCH_SIZE="10")
    await wait_until(lambda: owner_is(world, first), timeout=15, message="first relay leads")
    second = await world.start_process("standby", RELAY_BATCH_SIZE="10")
    aggregates = [str(ObjectId()) for _ in range(100)]
    ids: list[ObjectId] = []

    async def write_versions(*versions: int) -> None:
        docs = [world.event_doc(ObjectId(), agg, v) for v in versions for agg in aggregates]
        await world.outbox.insert_many(docs)
        ids.extend(d["_id"] for d in docs)

    async def published() -> int:
        return int(
            await world.outbox.count_documents(
                {"_id": {"$in": ids}, "status": OutboxStatus.PUBLISHED.value}
            )
        )

    await write_versions(1, 2, 3, 4)
    await wait_until(
        lambda: _at_least(published, 60), timeout=30, interval=0.02, message="publishing"
    )
    old_epoch = (await world.db[LEASE_COLLECTION].find_one({"_id": LEASE_ID}))["epoch"]
    pid = world.stack.pids()[first]
    os.killpg(pid, signal.SIGSTOP)
    try:
        assert await published() < len(ids), "the backlog was done before the pause"
        await wait_until(
            lambda: owner_is(world, second), timeout=20, message="standby took the lease"
        )
        lease = await world.db[LEASE_COLLECTION].find_one({"_id": LEASE_ID})
        takeover_at, new_epoch = lease["acquiredAt"], lease["epoch"]
        assert new_epoch > old_epoch
        await write_versions(5)
    finally:
        os.killpg(pid, signal.SIGCONT)
    port = world.stack.port_of(first)

    async def old_leader_stepped_down() -> bool:
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        return "relay_is_leader 0.0" in metrics

    await wait_until(old_leader_stepped_down, timeout=30, message="old leader stepped down")
    await world.wait_published(ids, within=90)
    assert await leader_of(world) == second

    docs = await world.outbox.find({"_id": {"$in": ids}}).to_list()
    # Nothing Failed, no attempt charged, no transient round recorded by anyone.
    assert {d["status"] for d in docs} == {OutboxStatus.PUBLISHED.value}
    assert {d["attempts"] for d in docs} == {0}
    assert not [d for d in docs if d.get("transientAttempts")]
    # The old leader's marks all come from before the takeover: after it, it wrote nothing.
    by_old = [d for d in docs if d["relayEpoch"] == old_epoch]
    assert all(d["publishedAt"] < takeover_at for d in by_old), [
        (d["publishedAt"], takeover_at) for d in by_old if d["publishedAt"] >= takeover_at
    ]
    assert {d["relayEpoch"] for d in docs} <= {old_epoch, new_epoch}

    records = await world.read_records(aggregates, at_least=len(ids))
    assert {r.event_id for r in records} == {str(i) for i in ids}  # nothing lost
    for agg, versions in by_key(records).items():
        assert first_occurrences(versions) == [1, 2, 3, 4, 5], agg


async def _at_least(count: Callable[[], Awaitable[int]], wanted: int) -> bool:
    return await count() >= wanted


async def test_the_console_names_the_leader_next_to_the_fence_document(world: RelayWorld) -> None:
    # The lease collection holds the lease and the fence of status writes: the console must
    # read the lease, not whichever document comes first.
    world.slots = 1
    await world.db[LEASE_COLLECTION].insert_one({"_id": fence_id(SLOT), "epoch": 0})
    async with running_relay(world.settings(instance_id="shown")) as relay:
        await wait_until(lambda: relay.holds(SLOT), timeout=15, message="leadership")
        settings = ConsoleSettings(token="t" * 40, orders_database=world.database)
        shown = await console_views.leader(world.mongo, settings)
        lease = relay.lease_of(SLOT)
        assert lease is not None
        assert (shown.owner, shown.epoch) == ("shown", lease.epoch)
