"""The scaling phases' figures: a drain's rates from its publish stamps, the relays' shares."""

from __future__ import annotations

from bench.relays_scaling import instance_names
from bench.scaling_model import drain_rates, metric_value, shares
from stack.supervisor import component_of


def test_the_steady_rate_leaves_out_the_start_and_the_tail_of_a_drain() -> None:
    # Relays started at t=0; a slow start (first mark at 5 s), then 100 events every second,
    # then a slow tail (the last 100 a full 5 s later).
    marks = [(5.0 + n, 100) for n in range(9)] + [(18.0, 100)]
    rates = drain_rates(marks, started_at=0.0)
    assert rates.published == 1000
    # 10% (100) is reached at the first mark (5 s), 90% (900) at 13 s: 800 events in 8 s.
    assert rates.steady_events_per_s == 100.0
    # First to last publish: the 900 events after the first mark in 13 s.
    assert rates.publishing_events_per_s == round(900 / 13, 1)
    # From the start command: everything over 18 s, start-up included.
    assert rates.wall_events_per_s == round(1000 / 18, 1)
    assert rates.first_publish_after_seconds == 5.0
    assert rates.last_publish_after_seconds == 18.0


def test_marks_arriving_out_of_order_and_empty_ones_do_not_change_the_rates() -> None:
    ordered = [(1.0, 50), (2.0, 50), (3.0, 50), (4.0, 50)]
    shuffled = [(3.0, 50), (1.0, 50), (4.0, 50), (2.0, 0), (2.0, 50)]
    assert drain_rates(shuffled, 0.0) == drain_rates(ordered, 0.0)


def test_a_drain_that_published_nothing_or_in_one_mark_has_no_rate() -> None:
    assert drain_rates([], 0.0).steady_events_per_s is None
    single = drain_rates([(2.0, 500)], 0.0)
    assert single.published == 500
    assert single.steady_events_per_s is None
    assert single.publishing_events_per_s is None
    assert single.wall_events_per_s == 250.0


EXPOSITION = """# HELP relay_published_total Events published
# TYPE relay_published_total counter
relay_published_total 1500.0
# HELP relay_owned_slots Slots this process owns
# TYPE relay_owned_slots gauge
relay_owned_slots 8.0
# HELP relay_pending_events Pending events
# TYPE relay_pending_events gauge
relay_pending_events{slot="0"} 3.0
relay_pending_events{slot="1"} 4.0
"""


def test_metric_values_are_read_from_the_exposition_and_absent_ones_are_none() -> None:
    assert metric_value(EXPOSITION, "relay_published_total") == 1500.0
    assert metric_value(EXPOSITION, "relay_owned_slots") == 8.0
    assert metric_value(EXPOSITION, "relay_pending_events") == 7.0  # summed over slots
    assert metric_value(EXPOSITION, "relay_is_leader") is None


def test_shares_show_whether_the_relays_divided_the_work() -> None:
    assert shares({"a": 2000.0, "b": 0.0}) == {"a": 1.0, "b": 0.0}
    assert shares({"a": 600.0, "b": 400.0, "c": None}) == {"a": 0.6, "b": 0.4, "c": None}


def test_every_relay_of_a_drain_is_a_valid_stack_instance_of_the_relay() -> None:
    names = instance_names(4)
    assert len(set(names)) == 4
    assert all(component_of(name) == "relay" for name in names)
