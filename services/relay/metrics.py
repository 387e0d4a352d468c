"""Prometheus metrics of one relay instance (its own registry, so two relays fit in one test)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class Backlog(Collector):
    """``relay_pending_events`` and ``relay_oldest_pending_age_seconds``: the unlabelled total
    of the whole outbox (as before slots: dashboards and alerts keep working), and one sample
    per slot this instance holds, ``{slot="n"}``. Each slot is reported by its holder only, so
    ``sum by (slot)`` across relays never counts a slot twice."""

    def __init__(self) -> None:
        self.pending = 0.0
        self.oldest_age = 0.0
        # slot -> (pending, oldest pending age)
        self.slots: dict[int, tuple[float, float]] = {}

    def set_total(self, pending: float, oldest_age: float) -> None:
        self.pending, self.oldest_age = pending, oldest_age

    def set_slots(self, slots: Mapping[int, tuple[float, float]]) -> None:
        self.slots = dict(slots)

    def collect(self) -> Iterable[Metric]:
        pending = Metric(
            "relay_pending_events",
            "Outbox events with status Pending (no label: the whole outbox; slot: a slot this "
            "instance holds)",
            "gauge",
        )
        oldest = Metric(
            "relay_oldest_pending_age_seconds",
            "Age of the oldest Pending outbox event, 0 when none (no label: the whole outbox; "
            "slot: a slot this instance holds)",
            "gauge",
        )
        # The totals first: a reader that takes the first sample of a name gets the total.
        pending.add_sample("relay_pending_events", {}, self.pending)
        oldest.add_sample("relay_oldest_pending_age_seconds", {}, self.oldest_age)
        for slot, (count, age) in sorted(self.slots.items()):
            pending.add_sample("relay_pending_events", {"slot": str(slot)}, count)
            oldest.add_sample("relay_oldest_pending_age_seconds", {"slot": str(slot)}, age)
        return [pending, oldest]


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.backlog = Backlog()
        self.registry.register(self.backlog)
        self.failed = Gauge(
            "relay_failed_events", "Outbox events with status Failed", registry=self.registry
        )
        self.published = Counter(
            "relay_published",
            "Events published to Kafka and marked Published",
            registry=self.registry,
        )
        self.publish_errors = Counter(
            "relay_publish_errors",
            "Failed publish attempts by fault kind",
            ["kind"],
            registry=self.registry,
        )
        self.events_failed = Counter(
            "relay_events_failed", "Events this relay parked as Failed", registry=self.registry
        )
        self.batch_size = Histogram(
            "relay_batch_size",
            "Events sent per batch",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=self.registry,
        )
        self.commit_to_publish = Histogram(
            "relay_commit_to_publish_seconds",
            "From the outbox event's createdAt to its Published mark",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.wakeups = Counter(
            "relay_wakeups",
            "Idle waits of the publish loop ended, by what ended them: change_stream (an insert "
            "notification), stream_opened (the stream (re)opened or broke), sweep (the interval)",
            ["source"],
            registry=self.registry,
        )
        self.is_leader = Gauge(
            "relay_is_leader",
            "1 while this instance holds at least one slot (publishes part of the outbox)",
            registry=self.registry,
        )
        self.owned_slots = Gauge(
            "relay_owned_slots", "Slots this instance holds and publishes", registry=self.registry
        )
        self.slots_configured = Gauge(
            "relay_slots_configured",
            "RELAY_SLOTS: the number of slots the outbox is divided into",
            registry=self.registry,
        )
        self.slots_disagreement = Gauge(
            "relay_slots_disagreement",
            "1 while this instance's RELAY_SLOTS is not the one the running relays use: it takes "
            "and gives up no slot and is not ready (the others publish every slot without it)",
            registry=self.registry,
        )
        self._last_token_save: float | None = None
        self.resume_token_age = Gauge(
            "relay_resume_token_save_age_seconds",
            "Seconds since this instance last saved the change-stream resume token (-1: never)",
            registry=self.registry,
        )
        self.resume_token_age.set_function(self._token_age)

    def token_saved(self) -> None:
        self._last_token_save = time.monotonic()

    def _token_age(self) -> float:
        if self._last_token_save is None:
            return -1.0
        return time.monotonic() - self._last_token_save
