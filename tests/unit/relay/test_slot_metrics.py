"""The relay's backlog gauges: the unlabelled totals as before slots, one series per held slot."""

from __future__ import annotations

from prometheus_client import generate_latest

from services.relay.metrics import RelayMetrics


def test_the_totals_stay_unlabelled_and_each_held_slot_has_its_own_series() -> None:
    metrics = RelayMetrics()
    metrics.backlog.set_total(12, 30.5)
    metrics.backlog.set_slots({3: (5, 30.5), 11: (0, 0.0)})
    metrics.owned_slots.set(2)
    metrics.slots_configured.set(16)
    registry = metrics.registry
    assert registry.get_sample_value("relay_pending_events") == 12
    assert registry.get_sample_value("relay_oldest_pending_age_seconds") == 30.5
    assert registry.get_sample_value("relay_pending_events", {"slot": "3"}) == 5
    assert registry.get_sample_value("relay_oldest_pending_age_seconds", {"slot": "11"}) == 0
    assert registry.get_sample_value("relay_owned_slots") == 2
    assert registry.get_sample_value("relay_slots_configured") == 16
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("relay_pending_events")]
    # A reader taking the first sample of the name (the chaos harness, a quick grep) gets the total.
    assert lines[0] == "relay_pending_events 12.0", lines


def test_a_slot_given_up_disappears_from_the_series() -> None:
    metrics = RelayMetrics()
    metrics.backlog.set_slots({1: (4, 2.0), 2: (1, 1.0)})
    metrics.backlog.set_slots({2: (1, 1.0)})
    assert metrics.registry.get_sample_value("relay_pending_events", {"slot": "1"}) is None
