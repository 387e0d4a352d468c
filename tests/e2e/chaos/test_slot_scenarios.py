"""Relays sharing the slots under faults (issue 14): three relays with one SIGKILLed while a
backlog drains, a fourth joining under load, and one paused past its leases and resumed (a
zombie for the slots that moved).

Besides the invariants of every scenario (nothing lost, per-key order, no duplicate effect), each
checks from the topics themselves that **no slot ever had two publishers**: every record carries
the slot and the epoch of the slot lease it was published under (headers ``relaySlot``,
``relayEpoch``), and within a partition a slot's records never go back to an older epoch (an
older holder's record after a newer holder's would be two publishers interleaving). Records of
aborted (fenced) transactions are not read (``read_committed``).

The scenarios run on the three-node Kafka cluster the broker scenarios use (issue 14: the
relays' faults on a replicated Kafka).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, Final

import pytest

from services.relay.lease import LEASE_COLLECTION, lease_id
from services.relay.members import MEMBERS_COLLECTION
from shared.contracts import Header
from shared.kafka import decode_headers
from shared.outbox import OUTBOX_COLLECTION, OutboxField
from shared.slots import DEFAULT_RELAY_SLOTS
from stack import Stack
from tests.e2e.chaos.faults import pause, resume
from tests.e2e.chaos.harness import ORDERS_DB, Chaos
from tests.waiting import wait_until

pytestmark = pytest.mark.chaos

LOAD_RATE = 4
SLOTS: Final = DEFAULT_RELAY_SLOTS
# The suite's relays: lease TTL 4 s, renewed every second (harness). A dead relay's slots are
# taken within TTL + one renewal interval; the rest is slack for a loaded two-core machine.
TAKEOVER_BUDGET_SECONDS = 10.0
# Small batches: a backlog takes several rounds per slot, so a relay dies with rounds in flight.
SMALL_BATCH = {"RELAY_BATCH_SIZE": "2"}
BACKLOG = 60


@pytest.fixture(scope="module")
def stack(cluster_stack: Stack) -> Stack:
    """This module's stack: the three-node Kafka cluster (overrides the session's one broker)."""
    return cluster_stack


def _extra(instance: str, **env: str) -> dict[str, str]:
    # A readable instance id: the membership and lease documents name it.
    return {"RELAY_INSTANCE_ID": instance, **env}


async def _owned(chaos: Chaos, instance: str) -> int:
    value = await chaos.metric(instance, "relay_owned_slots")
    return int(value or 0)


async def _shared_by(chaos: Chaos, instances: list[str]) -> bool:
    """Every slot is held, and by ``instances`` only, in fair shares."""
    owned = [await _owned(chaos, i) for i in instances]
    return sum(owned) == SLOTS and max(owned) - min(owned) <= 1


async def _wait_shared_by(chaos: Chaos, instances: list[str], *, within: float = 30.0) -> None:
    await wait_until(
        lambda: _shared_by(chaos, instances),
        timeout=within,
        interval=0.1,
        message=f"the slots shared by {', '.join(instances)}",
    )


async def _leases(chaos: Chaos) -> dict[int, dict[str, Any]]:
    """Every slot's lease document (owner, epoch, acquiredAt, expiresAt)."""
    ids = {lease_id(s): s for s in range(SLOTS)}
    found = chaos.pipeline.mongo[ORDERS_DB][LEASE_COLLECTION].find({"_id": {"$in": list(ids)}})
    return {ids[str(doc["_id"])]: doc async for doc in found}


async def _held_by(chaos: Chaos, instance: str) -> dict[int, int]:
    """slot -> epoch of the slots whose lease names ``instance``."""
    return {s: int(d["epoch"]) for s, d in (await _leases(chaos)).items() if d["owner"] == instance}


def _two_publishers(chaos: Chaos) -> list[str]:
    """Violations of "one publisher per slot", read from the committed records: within a
    partition, a slot's records never go back to an older lease epoch."""
    problems: list[str] = []
    newest: dict[tuple[str, int, str], tuple[int, int]] = {}
    records = [r for tail in (chaos.orders_tail, chaos.cancels_tail) for r in tail.records]
    unsigned = 0
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        headers = decode_headers(r.headers)
        slot, epoch = headers.get(Header.RELAY_SLOT), headers.get(Header.RELAY_EPOCH)
        if slot is None or epoch is None:
            unsigned += 1
            continue
        key = (r.topic, r.partition, slot)
        seen = newest.get(key)
        if seen is not None and int(epoch) < seen[0]:
            problems.append(
                f"{r.topic}/{r.partition}:{r.offset} slot {slot} epoch {epoch} after epoch "
                f"{seen[0]} at offset {seen[1]}: two publishers interleaved"
            )
        if seen is None or int(epoch) >= seen[0]:
            newest[key] = (int(epoch), r.offset)
    if unsigned:
        problems.append(f"{unsigned} record(s) without the relaySlot/relayEpoch headers")
    if not records:
        problems.append("no record read: nothing to check")
    return problems


def _judge(chaos: Chaos, problems: list[str]) -> None:
    chaos.result.violations += problems
    assert not problems, f"{chaos.name}:\n  " + "\n  ".join(problems)


async def test_three_relays_one_killed_mid_backlog_its_slots_move_to_the_other_two(
    chaos: Chaos,
) -> None:
    """three relays, one SIGKILLed mid-batch"""
    await chaos.start("relay-2", _extra("relay-2", **SMALL_BATCH))
    await chaos.start("relay-3", _extra("relay-3", **SMALL_BATCH))
    relays = ["relay", "relay-2", "relay-3"]
    await _wait_shared_by(chaos, relays)
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(5)
        victims = await _held_by(chaos, "relay-2")
        assert victims, "relay-2 holds no slot"
        # A backlog, drained in rounds of two per slot: the victim dies with rounds in flight.
        burst = asyncio.create_task(load.burst(BACKLOG))
        outbox = chaos.pipeline.mongo[ORDERS_DB][OUTBOX_COLLECTION]

        async def mid_backlog() -> bool:
            pending = await outbox.count_documents(
                {OutboxField.STATUS: "Pending", OutboxField.SLOT: {"$in": list(victims)}}
            )
            return pending > 0

        await wait_until(mid_backlog, timeout=30, interval=0.02, message="victim's backlog")
        await chaos.kill("relay-2")
        killed_at = time.monotonic()
        await _wait_shared_by(chaos, ["relay", "relay-3"], within=TAKEOVER_BUDGET_SECONDS + 20)
        takeover = time.monotonic() - killed_at
        await burst
        chaos.note(f"relay-2 killed holding slots {sorted(victims)}; taken in {takeover:.1f}s")
        after = await _leases(chaos)
        moved = {s: after[s]["owner"] for s in victims}
        assert "relay-2" not in moved.values(), moved
        assert all(int(after[s]["epoch"]) > e for s, e in victims.items())
        await load.wait_more_accepted(8)
    chaos.recovered()
    await chaos.verify()
    _judge(chaos, _two_publishers(chaos))
    assert takeover <= TAKEOVER_BUDGET_SECONDS, f"the slots moved in {takeover:.1f}s"


async def test_a_fourth_relay_joins_under_load_and_receives_its_share(chaos: Chaos) -> None:
    """a fourth relay joins under load"""
    await chaos.start("relay-2", _extra("relay-2"))
    await chaos.start("relay-3", _extra("relay-3"))
    await _wait_shared_by(chaos, ["relay", "relay-2", "relay-3"])
    async with chaos.load(rate=LOAD_RATE, cancel_share=0.3) as load:
        await load.wait_accepted(8)
        before = await _leases(chaos)
        joined_at = time.monotonic()
        await chaos.start("relay-4", _extra("relay-4"))
        await _wait_shared_by(chaos, ["relay", "relay-2", "relay-3", "relay-4"])
        chaos.note(f"four relays hold 4 slots each {time.monotonic() - joined_at:.1f}s after")
        gained = await _held_by(chaos, "relay-4")
        assert len(gained) == SLOTS // 4, gained
        # Each slot it received was released by its holder (after its round in flight) and
        # taken under a newer epoch.
        assert all(e > int(before[s]["epoch"]) for s, e in gained.items()), gained
        await load.wait_more_accepted(12)
    chaos.recovered()
    await chaos.verify()
    _judge(chaos, _two_publishers(chaos))


async def test_a_relay_paused_past_its_leases_writes_and_publishes_nothing_for_them(
    chaos: Chaos,
) -> None:
    """a relay paused past its leases, resumed"""
    await chaos.start("relay-2", _extra("relay-2"))
    await chaos.start("relay-3", _extra("relay-3"))
    await _wait_shared_by(chaos, ["relay", "relay-2", "relay-3"])
    async with chaos.load(rate=LOAD_RATE, cancel_share=0.3) as load:
        await load.wait_accepted(8)
        lost = await _held_by(chaos, "relay-3")
        assert lost, "relay-3 holds no slot"
        await pause(chaos, "relay-3")
        chaos.note(f"relay-3 paused (SIGSTOP) holding slots {sorted(lost)}")
        try:
            await _wait_shared_by(chaos, ["relay", "relay-2"], within=TAKEOVER_BUDGET_SECONDS + 20)
            taken = await _leases(chaos)
        finally:
            await resume(chaos, "relay-3")
        chaos.note("relay-3 resumed: a zombie for its old slots until it notices")
        # It rejoins and gets a share again, under new epochs (the others release slots).
        await _wait_shared_by(chaos, ["relay", "relay-2", "relay-3"])
        await load.wait_more_accepted(12)
    chaos.recovered()
    await chaos.verify()
    problems = _two_publishers(chaos)
    # Nothing it marked under an old epoch after that slot was taken from it.
    outbox = chaos.pipeline.mongo[ORDERS_DB][OUTBOX_COLLECTION]
    for slot, epoch in lost.items():
        takeover: datetime = taken[slot]["acquiredAt"]
        late = await outbox.count_documents(
            {
                OutboxField.SLOT: slot,
                OutboxField.RELAY_EPOCH: epoch,
                OutboxField.PUBLISHED_AT: {"$gte": takeover},
            }
        )
        if late:
            problems.append(f"{late} event(s) of slot {slot} marked by the zombie after takeover")
    members = chaos.pipeline.mongo[ORDERS_DB][MEMBERS_COLLECTION]
    assert await members.find_one({"_id": "relay-3"}) is not None, "the zombie left for good"
    _judge(chaos, problems)
