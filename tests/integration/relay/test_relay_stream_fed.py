"""The relay publishes what the change stream delivers, without reading it again, and only when
that is safe: an event goes behind its aggregate's unpublished predecessors, a document the
stream replays after a restart is not sent again, and the stream and the sweep never send one
event twice in one process (services/relay/stream_feed.py)."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import monitoring

from services.relay.main import Relay
from services.relay.retry import retry_event
from services.relay.wakeup import TOKEN_COLLECTION, TOKEN_ID
from shared.contracts import OutboxStatus
from shared.outbox import OUTBOX_COLLECTION, OutboxField
from shared.slots import slot_for
from tests.integration.relay.relay_world import RelayWorld, by_key, running_relay
from tests.waiting import wait_until


class _OutboxReads(monitoring.CommandListener):
    """The queries the relay sends to the outbox (the change stream's getMores aside)."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        if event.command_name not in ("find", "distinct"):
            return
        if command.get(event.command_name) != OUTBOX_COLLECTION:
            return
        if "$or" in command.get("filter", {}):
            return  # the slot assignment's look for events without a slot (every sweep interval)
        self.commands.append(f"{event.command_name} {dict(command.get('filter', {}))}")

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def _ready_and_idle(relay: Relay) -> None:
    await wait_until(lambda: relay.owned_slots(), timeout=15, message="slots held")
    await wait_until(
        lambda: relay.metrics.wakeups.labels(source="stream_opened")._value.get() >= 1,
        timeout=15,
        message="change stream open",
    )
    await wait_until(lambda: relay.idle, timeout=15, message="publish loops idle")


def _stream_fed(relay: Relay) -> int:
    return sum(worker.publisher.stream_fed for worker in relay.workers.values())


async def test_an_inserted_event_is_published_from_the_stream_without_reading_it_again(
    world: RelayWorld,
) -> None:
    reads = _OutboxReads()
    # No sweep and no gauge refresh during the test: only the stream can start a round.
    settings = world.settings(sweep_interval_seconds=60, metrics_interval_seconds=300)
    async with running_relay(settings, [reads]) as relay:
        await _ready_and_idle(relay)
        reads.commands.clear()
        order = str(ObjectId())
        first = await world.insert(order, 1)
        await world.wait_published([first], within=5)
        # The next event of an order this holder published needs no predecessor lookup either.
        second = await world.insert(order, 2)
        await world.wait_published([second], within=5)
        assert reads.commands == [], reads.commands
        assert _stream_fed(relay) == 2
    records = await world.read_records([order], at_least=2)
    assert by_key(records) == {order: [1, 2]}
    # Marked as any published event: where Kafka put it is on record.
    doc = await world.outbox.find_one({"_id": second})
    assert doc[OutboxField.KAFKA_OFFSET] == max(r.offset for r in records)


async def test_a_streamed_event_waits_behind_a_failed_event_of_its_aggregate_until_retried(
    world: RelayWorld,
) -> None:
    order = str(ObjectId())
    async with running_relay(world.settings(sweep_interval_seconds=0.3)) as relay:
        await _ready_and_idle(relay)
        # v1 arrives already parked (its insert snapshot says Failed), then v2 arrives Pending.
        parked = world.event_doc(ObjectId(), order, 1)
        parked[OutboxField.STATUS] = OutboxStatus.FAILED.value
        await world.outbox.insert_one(parked)
        later = await world.insert(order, 2)
        worker = relay.workers[slot_for(order, world.slots)]
        # The round that took v2 from the stream is over (the loop waits again) and the sweeps
        # after it too (a sweep follows a round that left a document to it: v1's).
        await wait_until(
            lambda: later in worker.publisher._recent and worker.idle,
            timeout=10,
            message="v2 handled",
        )
        assert await world.status_of(later) == OutboxStatus.PENDING.value
        assert await world.status_of(parked["_id"]) == OutboxStatus.FAILED.value
        await retry_event(world.outbox, str(parked["_id"]))
        await world.wait_published([parked["_id"], later], within=10)
    records = await world.read_records([order], at_least=2)
    assert by_key(records) == {order: [1, 2]}  # nothing before the retry, then in order, once


async def test_inserts_the_stream_replays_after_a_restart_are_not_published_again(
    world: RelayWorld,
) -> None:
    orders = [str(ObjectId()) for _ in range(20)]
    settings = world.settings(resume_token_save_seconds=0.1)
    tokens = world.db[TOKEN_COLLECTION]
    async with running_relay(settings) as relay:
        await _ready_and_idle(relay)
        # A token saved after this marker's insert and before the orders'.
        marker = await world.insert(str(ObjectId()), 1)
        await world.wait_published([marker], within=10)
        token_before = await wait_until(
            lambda: tokens.find_one({"_id": TOKEN_ID}), timeout=10, message="resume token saved"
        )
        ids = [await world.insert(order, 1) for order in orders]
        await world.wait_published(ids, within=20)
    # A new relay resumes from before the orders' inserts (as after a crash between two token
    # saves): the stream hands it Pending snapshots of events published meanwhile.
    await tokens.replace_one({"_id": TOKEN_ID}, token_before)
    async with running_relay(settings) as relay:
        await _ready_and_idle(relay)
        late = await world.insert(orders[0], 2)
        await world.wait_published([late], within=10)
    records = await world.read_records(orders, at_least=len(orders) + 1)
    assert sorted(r.event_id for r in records) == sorted(str(i) for i in [*ids, late])


async def test_events_both_streamed_and_swept_are_published_once_each(world: RelayWorld) -> None:
    # A sweep every 0.1 s while inserts stream in: many events are both in a worker's stream
    # inbox and in a sweep's read, and every one of them must still go out once.
    orders = [str(ObjectId()) for _ in range(60)]
    async with running_relay(world.settings(sweep_interval_seconds=0.1)) as relay:
        await _ready_and_idle(relay)
        ids: list[ObjectId] = []
        for version in (1, 2, 3):
            for start in range(0, len(orders), 10):
                docs: list[dict[str, Any]] = [
                    world.event_doc(ObjectId(), order, version)
                    for order in orders[start : start + 10]
                ]
                await world.outbox.insert_many(docs)
                ids.extend(doc["_id"] for doc in docs)
        await world.wait_published(ids, within=60)
        assert _stream_fed(relay) > 0
    records = await world.read_records(orders, at_least=len(ids))
    assert len(records) == len(ids), "an event was published twice"
    assert all(versions == [1, 2, 3] for versions in by_key(records).values())
