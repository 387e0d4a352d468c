"""The relay's backlog gauges (``relay_pending_events``, ``relay_oldest_pending_age_seconds``)
per held slot: right when a slot has a backlog, and cheap when the outbox has none, since an
idle relay refreshes them every metrics interval for as long as it runs."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import monitoring

from services.relay.main import Relay
from shared.contracts import OutboxStatus
from shared.outbox import OUTBOX_COLLECTION, OutboxField
from tests.integration.relay.relay_world import RelayWorld, running_relay
from tests.integration.relay.test_relay_slots import aggregate_in_slot
from tests.waiting import wait_until


class _OutboxQueries(monitoring.CommandListener):
    """Each read of the outbox the relay sends: its command name and filter (or pipeline).

    A gauge refresh counts with ``aggregate`` (``count_documents``) and reads the oldest Pending
    event's ``createdAt`` (a ``find`` with that projection); a sweep's ``find`` reads whole
    documents, so the two are told apart by the projection."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        if command.get(event.command_name) != OUTBOX_COLLECTION:
            return
        if event.command_name == "find" and command.get("projection"):
            self.reads.append(("find", repr(command.get("filter", {}))))
        elif event.command_name == "aggregate":
            self.reads.append(("aggregate", repr(command.get("pipeline", []))))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def failed_counts(self) -> int:
        """Gauge refreshes begun: each counts the Failed events once."""
        return sum(1 for _, text in self.reads if f"'{OutboxStatus.FAILED.value}'" in text)


def _pending_gauge(relay: Relay, slot: int) -> float | None:
    return relay.metrics.registry.get_sample_value("relay_pending_events", {"slot": str(slot)})


async def _idle(relay: Relay) -> None:
    await wait_until(lambda: relay.owned_slots(), timeout=15, message="slots held")
    await wait_until(lambda: relay.idle, timeout=15, message="publish loops idle")


async def test_an_idle_relay_refreshes_its_gauges_without_a_query_per_held_slot(
    world: RelayWorld,
) -> None:
    queries = _OutboxQueries()
    settings = world.settings(sweep_interval_seconds=60, metrics_interval_seconds=0.2)
    async with running_relay(settings, [queries]) as relay:
        await wait_until(lambda: len(relay.owned_slots()) == world.slots, timeout=15)
        await _idle(relay)
        queries.reads.clear()
        # Two whole refreshes after the clear: the one in flight, then one begun afterwards.
        await wait_until(
            lambda: queries.failed_counts() >= 3, timeout=15, message="two gauge refreshes"
        )
        per_slot = [read for read in queries.reads if f"'{OutboxField.SLOT}'" in read[1]]
        assert per_slot == [], f"{len(per_slot)} per-slot gauge reads, e.g. {per_slot[:2]}"
        assert all(_pending_gauge(relay, slot) == 0 for slot in relay.owned_slots())


async def test_a_held_slot_with_a_backlog_shows_it_in_its_gauge(world: RelayWorld) -> None:
    settings = world.settings(sweep_interval_seconds=60, metrics_interval_seconds=0.2)
    async with running_relay(settings) as relay:
        await _idle(relay)
        slot = sorted(relay.owned_slots())[0]
        order = aggregate_in_slot(slot, world.slots)
        # v1 parked as Failed holds v2 back: v2 stays Pending, a backlog of one in its slot.
        parked_id = ObjectId()
        parked: dict[str, Any] = world.event_doc(parked_id, order, 1)
        parked[OutboxField.STATUS] = OutboxStatus.FAILED.value
        await world.outbox.insert_one(parked)
        await world.insert(order, 2)
        await wait_until(
            lambda: _pending_gauge(relay, slot) == 1, timeout=15, message="the slot's backlog"
        )
        others = [s for s in relay.owned_slots() if s != slot]
        assert all(_pending_gauge(relay, s) == 0 for s in others)
        assert await world.status_of(parked_id) == OutboxStatus.FAILED.value
