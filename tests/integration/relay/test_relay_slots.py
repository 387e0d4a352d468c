"""Relays sharing the slots: a fair split with one holder per slot, a clean hand-over, per-slot
fencing in Kafka and in MongoDB, events without a slot, and the retry CLI by slot."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
from bson import ObjectId

from services.console.settings import ConsoleSettings
from services.console.views import slot_count_dissenters
from services.relay.lease import LEASE_COLLECTION, Lease, lease_id, transactional_id_for
from services.relay.main import Relay, health_server
from services.relay.members import MEMBERS_COLLECTION
from services.relay.metrics import RelayMetrics
from services.relay.publisher import Publisher
from services.relay.settings import RelaySettings
from shared.contracts import OutboxStatus
from shared.kafka import make_producer
from shared.outbox import INDEX_SLOT_PENDING, ensure_outbox_indexes
from shared.slots import slot_for
from tests.integration.relay.relay_world import (
    RelayWorld,
    by_key,
    first_occurrences,
    running_relay,
)
from tests.integration.relay.test_relay_failures import run_cli
from tests.waiting import wait_until


def split_evenly(relays: list[Relay], slots: int) -> bool:
    held = [relay.owned_slots() for relay in relays]
    everyone = set().union(*held)
    disjoint = sum(len(h) for h in held) == len(everyone)
    fair = max(len(h) for h in held) - min(len(h) for h in held) <= 1
    return everyone == set(range(slots)) and disjoint and fair


def _gauges_show(relay: Relay, peer: Relay) -> bool:
    registry = relay.metrics.registry

    def pending(slot: int) -> float | None:
        return registry.get_sample_value("relay_pending_events", {"slot": str(slot)})

    held = relay.owned_slots()
    return (
        bool(held)
        and all(pending(s) == 0 for s in held)
        and all(pending(s) is None for s in peer.owned_slots())
    )


def aggregate_in_slot(slot: int, slots: int) -> str:
    """A fresh aggregate id whose events live in ``slot``."""
    while True:
        candidate = str(ObjectId())
        if slot_for(candidate, slots) == slot:
            return candidate


async def test_two_relays_split_the_slots_and_every_slot_has_one_holder(world: RelayWorld) -> None:
    async with (
        running_relay(world.settings(instance_id="one")) as one,
        running_relay(world.settings(instance_id="two")) as two,
    ):
        await wait_until(
            lambda: split_evenly([one, two], world.slots), timeout=20, message="an 8/8 split"
        )
        assert one.metrics.owned_slots._value.get() == len(one.owned_slots()) == 8
        aggregates = [str(ObjectId()) for _ in range(40)]
        ids = [await world.insert(agg, v) for v in (1, 2) for agg in aggregates]
        await world.wait_published(ids, within=30)
        # Each event was published by the holder of its slot, under that slot's lease epoch.
        for doc in await world.outbox.find({"_id": {"$in": ids}}).to_list():
            holder = one if doc["slot"] in one.owned_slots() else two
            lease = holder.lease_of(doc["slot"])
            assert lease is not None and doc["relayEpoch"] == lease.epoch
        # Every slot's backlog gauge is exported by its holder only (and drops to 0).
        for relay, peer in ((one, two), (two, one)):
            await wait_until(
                partial(_gauges_show, relay, peer),
                timeout=10,
                message="per-slot gauges of the held slots only, at 0",
            )
    records = await world.read_records(aggregates, at_least=len(ids))
    for agg, versions in by_key(records).items():
        assert first_occurrences(versions) == [1, 2], agg


async def test_a_relay_stopping_cleanly_hands_its_slots_over_before_the_lease_ttl(
    world: RelayWorld,
) -> None:
    # A long TTL: only the release and the membership's removal can explain a quick takeover.
    slow = {"lease_ttl_seconds": 60.0, "lease_renew_seconds": 0.5}
    async with running_relay(world.settings(instance_id="stays", **slow)) as stays:
        async with running_relay(world.settings(instance_id="leaves", **slow)) as leaves:
            await wait_until(
                lambda: split_evenly([stays, leaves], world.slots),
                timeout=30,
                message="an even split",
            )
        # Well inside the 60 s TTL, yet room for a loaded machine: each taken slot starts a
        # transactional producer (InitProducerId), and CI saw eight of them miss 15 s.
        await wait_until(
            lambda: stays.owned_slots() == set(range(world.slots)),
            timeout=40,
            message="the remaining relay holds every slot",
        )
        ids = [await world.insert(str(ObjectId()), 1) for _ in range(20)]
        await world.wait_published(ids, within=30)


async def test_a_newer_producer_on_one_slots_transactional_id_fences_only_that_slot(
    world: RelayWorld,
) -> None:
    target, other = 3, 9
    async with holding_every_slot(world, "fenced", (target, other)) as relay:
        epochs = {s: _epoch(relay, s) for s in (target, other)}
        successor = make_producer(
            world.stack.config.kafka_bootstrap,
            transactional_id=transactional_id_for(world.transactional_id, target),
        )
        await successor.start()
        await successor.stop()
        ids = [await world.insert(aggregate_in_slot(s, world.slots), 1) for s in (target, other)]
        await world.wait_published(ids, within=60)
        # The fenced slot stepped down and was taken again under a new epoch; the other slot's
        # holder never noticed.
        after = {s: _epoch(relay, s) for s in (target, other)}
        assert after[other] == epochs[other]
        assert after[target] > epochs[target]


@contextlib.asynccontextmanager
async def holding_every_slot(
    world: RelayWorld, instance: str, warm: tuple[int, ...]
) -> AsyncIterator[Relay]:
    """One relay holding every slot under long leases (renewals cannot tell it of a takeover),
    with an event of each slot of ``warm`` published (their producers are up)."""
    settings = world.settings(instance_id=instance, lease_ttl_seconds=60, lease_renew_seconds=20)
    async with running_relay(settings) as relay:
        await wait_until(
            lambda: relay.owned_slots() == set(range(world.slots)), timeout=20, message="all slots"
        )
        ids = [await world.insert(aggregate_in_slot(s, world.slots), 1) for s in warm]
        await world.wait_published(ids, within=20)
        yield relay


def _epoch(relay: Relay, slot: int) -> int:
    lease = relay.lease_of(slot)
    assert lease is not None and lease.epoch is not None, f"slot {slot} is not held"
    return lease.epoch


async def test_a_holder_deposed_from_one_slot_writes_nothing_for_it_and_keeps_the_others(
    world: RelayWorld,
) -> None:
    lost, kept = 5, 6
    async with holding_every_slot(world, "old", (lost, kept)) as relay:
        # Another relay takes slot 5 over (as after a pause of this one past that lease).
        await world.db[LEASE_COLLECTION].update_one(
            {"_id": lease_id(lost)},
            {
                "$set": {"owner": "usurper", "expiresAt": datetime.now(UTC) + timedelta(60)},
                "$inc": {"epoch": 1},
            },
        )
        in_lost = await world.insert(aggregate_in_slot(lost, world.slots), 1)
        in_kept = await world.insert(aggregate_in_slot(kept, world.slots), 1)
        await world.wait_published([in_kept], within=20)
        await wait_until(lambda: not relay.holds(lost), timeout=20, message="stepped down")
        doc = await world.outbox.find_one({"_id": in_lost})
        assert doc["status"] == OutboxStatus.PENDING.value
        assert doc["publishedAt"] is None and "relayEpoch" not in doc
        assert relay.holds(kept)


async def test_events_without_a_slot_or_beyond_the_count_are_given_theirs_and_published(
    world: RelayWorld,
) -> None:
    # Written before slots existed (no field), or with a larger RELAY_SLOTS before a migration.
    aggregates = [str(ObjectId()) for _ in range(10)]
    docs = [world.event_doc(ObjectId(), agg, 1) for agg in aggregates]
    for i, doc in enumerate(docs):
        if i % 2:
            del doc["slot"]
        else:
            doc["slot"] = world.slots + 7
    await world.outbox.insert_many(docs)
    ids = [d["_id"] for d in docs]
    async with running_relay(world.settings()):
        await world.wait_published(ids, within=30)
        # Inserted while it runs: the change stream sees it and the slot is assigned at once.
        late = world.event_doc(ObjectId(), str(ObjectId()), 1)
        del late["slot"]
        await world.outbox.insert_one(late)
        await world.wait_published([late["_id"]], within=10)
    for doc in await world.outbox.find({"_id": {"$in": [*ids, late["_id"]]}}).to_list():
        assert doc["slot"] == slot_for(doc["aggregateId"], world.slots), doc


async def test_retry_cli_puts_back_the_failed_events_of_one_slot(world: RelayWorld) -> None:
    in_two = [await world.insert(aggregate_in_slot(2, world.slots), 1) for _ in range(2)]
    in_five = await world.insert(aggregate_in_slot(5, world.slots), 1)
    await world.outbox.update_many({}, {"$set": {"status": "Failed"}})

    code, _, err = await run_cli(world, "retry", "--all-failed", "--slot", str(world.slots))
    assert code == 2 and "RELAY_SLOTS" in err
    code, out, _ = await run_cli(world, "retry", "--all-failed", "--slot", "2")
    assert code == 0 and "2 failed event(s) in slot 2 put back to Pending" in out, out
    assert await world.status_of(in_five) == "Failed"
    assert {await world.status_of(i) for i in in_two} == {"Pending"}
    code, out, _ = await run_cli(world, "retry", str(in_five))
    assert code == 0 and "(slot 5)" in out, out


async def test_reslot_moves_events_to_their_new_slot_and_refuses_while_a_relay_runs(
    world: RelayWorld,
) -> None:
    aggregates = [str(ObjectId()) for _ in range(30)]
    ids = [await world.insert(agg, 1) for agg in aggregates]  # slots among 16
    world.slots = 4  # the new RELAY_SLOTS
    await world.db[MEMBERS_COLLECTION].insert_one(
        {"_id": "still-running", "expiresAt": datetime.now(UTC) + timedelta(seconds=60)}
    )
    code, _, err = await run_cli(world, "reslot")
    assert code == 1 and "still-running" in err and "stop every relay" in err, err
    assert await world.outbox.count_documents({"slot": {"$gte": 4}}) > 0  # nothing moved

    await world.db[MEMBERS_COLLECTION].delete_one({"_id": "still-running"})
    code, out, err = await run_cli(world, "reslot")
    assert code == 0 and "RELAY_SLOTS=4" in out, err
    for doc in await world.outbox.find({"_id": {"$in": ids}}).to_list():
        assert doc["slot"] == slot_for(doc["aggregateId"], 4), doc


async def test_a_new_holder_ends_the_status_transaction_a_killed_holder_left_open(
    world: RelayWorld,
) -> None:
    # A holder SIGKILLed inside its status transaction leaves it open on the server (until
    # transactionLifetimeLimitSeconds, 60 s), holding the events it was marking. Here: an open
    # transaction on an event's document, in a session the expired lease names.
    world.slots = 1
    event_id = await world.insert(str(ObjectId()), 1)
    dead = world.mongo.start_session()
    await dead.start_transaction()
    await world.outbox.update_one(
        {"_id": event_id}, {"$set": {"lastError": "the dead holder's mark"}}, session=dead
    )
    await world.db[LEASE_COLLECTION].insert_one(
        {
            "_id": lease_id(0),
            "owner": "killed",
            "epoch": 7,
            "expiresAt": datetime.now(UTC) - timedelta(seconds=1),
            "acquiredAt": datetime.now(UTC) - timedelta(seconds=30),
            "sessionId": dead.session_id,
        }
    )
    try:
        async with running_relay(world.settings()):
            # Far below the server's 60 s: only ending the dead session frees the event.
            await world.wait_published([event_id], within=15)
        doc = await world.outbox.find_one({"_id": event_id})
        assert doc["relayEpoch"] == 8 and doc["lastError"] is None, doc
    finally:
        await dead.end_session()


async def test_a_slots_scan_reads_its_index_range_not_the_collection(world: RelayWorld) -> None:
    await ensure_outbox_indexes(world.outbox, 3600)
    await world.outbox.insert_many(
        [world.event_doc(ObjectId(), str(ObjectId()), 1) for _ in range(200)]
    )
    slot = 3
    settings = world.settings()
    lease = Lease(world.db[LEASE_COLLECTION], "planner", 10, slot)
    publisher = Publisher(world.outbox, settings, RelayMetrics(), lease)
    cursor = await publisher._open_cursor()  # the very query a slot's holder sends
    explained = await cursor.explain()
    stages: list[str] = []

    def walk(stage: dict[str, Any]) -> None:
        stages.append(str(stage.get("stage")) + ":" + str(stage.get("indexName", "")))
        for child in [stage.get("inputStage"), *stage.get("inputStages", [])]:
            if isinstance(child, dict):
                walk(child)

    walk(explained["queryPlanner"]["winningPlan"])
    assert f"IXSCAN:{INDEX_SLOT_PENDING}" in stages, stages
    assert not [stage for stage in stages if stage.startswith("COLLSCAN")], stages
    # (On MongoDB the equality prefix also spares the sort; SecantusDB sorts the range it read
    # in memory, for the old {status: 1, createdAt: 1} scan too.)
    in_slot = await world.outbox.count_documents({"slot": slot})
    examined = explained["executionStats"]["totalDocsExamined"]
    assert examined <= in_slot, (examined, in_slot)  # its own slot's events, no others


async def test_a_killed_relays_membership_document_is_removed_by_a_ttl_index(
    world: RelayWorld,
) -> None:
    # A SIGKILLed relay never deletes its heartbeat document; without a TTL index every crash
    # would leave one behind for ever (ignored once expired, but growing the collection).
    async with running_relay(world.settings(instance_id="ttl")) as relay:
        await wait_until(lambda: bool(relay.owned_slots()), timeout=20, message="slots taken")
    members = world.db[MEMBERS_COLLECTION]
    ttl = [
        info
        for info in (await members.index_information()).values()
        if dict(info["key"]) == {"expiresAt": 1} and "expireAfterSeconds" in info
    ]
    assert ttl, await members.index_information()


async def _publish_in_every_slot_for(
    world: RelayWorld, within: float, rounds_lasting: float
) -> None:
    """Rounds of one event in every slot, each published within ``within``, until the rounds
    have covered ``rounds_lasting`` seconds (several balance rounds of every relay) and at
    least two of them ran."""
    started = time.monotonic()
    rounds = 0
    while rounds < 2 or time.monotonic() - started < rounds_lasting:
        ids = [await world.insert(aggregate_in_slot(s, world.slots), 1) for s in range(world.slots)]
        await world.wait_published(ids, within=within)
        rounds += 1


async def test_a_relay_with_another_slot_count_leaves_no_slot_unpublished(
    world: RelayWorld,
) -> None:
    settings = partial(world.settings, lease_ttl_seconds=3.0, lease_renew_seconds=1.0)
    async with (
        running_relay(settings(instance_id="one")) as one,
        running_relay(settings(instance_id="two")) as two,
    ):
        await wait_until(
            lambda: split_evenly([one, two], world.slots), timeout=30, message="an 8/8 split"
        )
        # Every slot's producer is up before the clock below starts (its first start is slow).
        warm = [
            await world.insert(aggregate_in_slot(s, world.slots), 1) for s in range(world.slots)
        ]
        await world.wait_published(warm, within=60)
        held = {"one": one.owned_slots(), "two": two.owned_slots()}
        odd = settings(instance_id="odd", relay_slots=2 * world.slots)
        async with running_relay(odd) as dissenter:
            await wait_until(
                partial(_is_member, world, "odd"), timeout=20, message="the odd relay's heartbeat"
            )
            # While it runs, every order is published within a sweep and a lease TTL, through
            # several balance rounds of every relay (each renewal interval).
            budget = odd.sweep_interval_seconds + odd.lease_ttl_seconds
            await _publish_in_every_slot_for(world, budget, rounds_lasting=4 * 1.0)
            assert {"one": one.owned_slots(), "two": two.owned_slots()} == held
            assert dissenter.owned_slots() == set()
            # It says so: its gauge, its /readyz (with the reason) and not the others'.
            assert dissenter.metrics.registry.get_sample_value("relay_slots_disagreement") == 1
            assert one.metrics.registry.get_sample_value("relay_slots_disagreement") == 0
            odd_ready = await _readyz(odd, dissenter)
            assert odd_ready.status_code == 503 and not odd_ready.json()["checks"]["relay_slots"]
            reason = odd_ready.json()["reason"]
            assert "RELAY_SLOTS=32" in reason and "use 16" in reason, reason
            assert (await _readyz(settings(instance_id="one"), one)).status_code == 200
            # The console's slot view names it, with its value.
            console = ConsoleSettings(token="t" * 32, orders_database=world.database)
            assert await slot_count_dissenters(world.mongo, console) == {"odd": 32}


async def test_the_relays_that_agree_take_every_slot_while_another_disagrees(
    world: RelayWorld,
) -> None:
    settings = partial(world.settings, lease_ttl_seconds=3.0, lease_renew_seconds=1.0)
    async with running_relay(settings(instance_id="stays")) as stays:
        await wait_until(
            lambda: stays.owned_slots() == set(range(world.slots)), timeout=30, message="all"
        )
        odd = settings(instance_id="odd", relay_slots=2 * world.slots)
        async with running_relay(odd) as dissenter:
            await wait_until(
                partial(_is_member, world, "odd"), timeout=20, message="the odd relay's heartbeat"
            )
            async with running_relay(settings(instance_id="joins")) as joins:
                # The newcomer shares with the relay that agrees, not with the odd one: 8/8.
                await wait_until(
                    lambda: split_evenly([stays, joins], world.slots),
                    timeout=30,
                    message="an 8/8 split of the two that agree",
                )
            # The newcomer stopped: its slots go back to the one that agrees, none to the odd one.
            await wait_until(
                lambda: stays.owned_slots() == set(range(world.slots)),
                timeout=30,
                message="the relay that agrees holds every slot again",
            )
            assert dissenter.owned_slots() == set()
            ids = [await world.insert(str(ObjectId()), 1) for _ in range(20)]
            await world.wait_published(ids, within=30)


async def _readyz(settings: RelaySettings, relay: Relay) -> httpx.Response:
    """The relay's /readyz, from the health server its process serves."""
    server = health_server(settings, relay)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            return await http.get("/readyz")
    finally:
        await server.stop()


async def _is_member(world: RelayWorld, instance: str) -> bool:
    return bool(await world.db[MEMBERS_COLLECTION].count_documents({"_id": instance}) == 1)
