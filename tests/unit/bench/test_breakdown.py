"""The light-load breakdown: which timestamps make each stage, and orders missing one."""

from __future__ import annotations

from datetime import UTC, datetime

from bench.breakdown import stage_distributions, timelines_of
from bench.e2e_latency import OrderTimes


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_each_stage_is_the_difference_of_its_two_timestamps_per_order() -> None:
    times = OrderTimes(
        answered={"a": 100.004, "b": 200.004},
        kafka_visible={"a": 100.030},
        kafka_created={"a": 100.010, "b": 200.010},
        reserved={"a": 100.050, "b": 200.060},
    )
    timelines = timelines_of(
        times,
        api_commits={"a": 100.000, "b": 200.000},
        outbox_docs=[{"aggregateId": "a", "publishedAt": _at(100.040)}, {"aggregateId": "b"}],
        reservation_docs=[{"orderId": "a", "createdAt": _at(100.035)}],
    )
    stages = stage_distributions(timelines)

    assert stages["commit_to_relay_send"].p50_ms == 10.0
    assert stages["relay_send_to_kafka_visible"].p50_ms == 20.0
    assert stages["relay_send_to_published_mark"].p50_ms == 30.0
    assert stages["kafka_visible_to_handler_start"].p50_ms == 5.0
    assert stages["handler_start_to_reserved"].p50_ms == 15.0
    # "b" has no Kafka visibility, mark or handler start: left out of those stages only.
    assert stages["relay_send_to_kafka_visible"].count == 1
    assert stages["answered_to_reserved"].count == 2
    assert stages["answered_to_reserved"].missing == 0


def test_only_orders_answered_with_a_201_have_a_timeline() -> None:
    times = OrderTimes(answered={"a": 1.0}, reserved={"a": 1.02, "stray": 5.0})
    assert set(timelines_of(times, {"stray": 4.0}, [], [])) == {"a"}
