"""Issue 21's goals as ``bench/report.py`` judges them: met, not met, or not measured with why."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report
from bench.capacity_model import capacity_bound, order_costs
from stack.config import SERVICES


def _light(p50: float, p99: float, *, small: bool = False) -> dict[str, Any]:
    distribution = {"p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "small_sample": small}
    return {"achieved_rate": 5.0, "reservation_from_201": distribution}


def _goals(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    results.setdefault("failures", [])
    results["summary"] = report.summarize(results)
    return {g["goal"]: g for g in report.evaluate_goals(results)}


P50 = "light 201->reservation p50 <= 15 ms"
P99 = "light 201->reservation p99 <= 40 ms"


def test_light_load_is_judged_on_the_median_of_three_runs_of_200_samples() -> None:
    runs = [_light(12.0, 30.0), _light(16.0, 45.0), _light(14.0, 38.0)]
    goals = _goals({"e2e_runs": {"ours_light": runs}})
    assert goals[P50]["value"] == 14.0 and goals[P50]["met"] is True
    assert goals[P99]["value"] == 38.0 and goals[P99]["met"] is True
    assert "median of 3 runs 14.0 ms (min 12.0, max 16.0)" in goals[P50]["note"]
    slower = [_light(12.0, 30.0), _light(16.0, 45.0), _light(15.5, 41.0)]
    goals = _goals({"e2e_runs": {"ours_light": slower}})
    assert goals[P50]["met"] is False and goals[P99]["met"] is False


def test_light_load_from_fewer_than_three_runs_is_shown_but_not_judged() -> None:
    goals = _goals({"e2e_runs": {"ours_light": [_light(12.0, 30.0), _light(13.0, 31.0)]}})
    for name in (P50, P99):
        assert goals[name]["value"] is not None
        assert goals[name]["met"] is None
        assert "2 light run(s), the goal needs the median of >= 3" in goals[name]["note"]


def test_light_load_without_its_runs_is_not_measured() -> None:
    goals = _goals({})
    assert goals[P50]["met"] is None and "light runs not measured" in goals[P50]["note"]


CAPACITY = "capacity >= 40 orders/s"
OF_BOUND = "capacity >= 0.75x MongoDB bound"


def _ramp(capacity: float | None, rates: list[float]) -> dict[str, Any]:
    return {
        "capacity_orders_per_s": capacity,
        "steps": [{"offered_rate": rate, "sustained": True} for rate in rates],
    }


def _capacity(ramps: list[dict[str, Any] | None], raw_txn_per_s: float) -> dict[str, Any]:
    bounds = [capacity_bound(raw_txn_per_s, cost) for cost in order_costs()]
    return {"capacity": {"runs": {"ours": ramps}, "bounds": bounds}}


def test_capacity_is_the_median_ramp_against_40_and_the_same_runs_mongodb_bound() -> None:
    # Ours costs 3 commits and 7 writes an order: min(175 / 3, 175 x 2 / 7) = 50 orders/s.
    steps = [10.0, 20.0, 30.0, 40.0, 50.0]
    ramps = [_ramp(40.0, steps), _ramp(30.0, steps[:4]), _ramp(50.0, [*steps, 60.0]), None]
    goals = _goals(_capacity(ramps, 175.0))
    assert goals[CAPACITY]["value"] == 40.0 and goals[CAPACITY]["met"] is True
    assert "median of 3 ramps (40, 30, 50) = 40 orders/s" in goals[CAPACITY]["note"]
    assert goals[OF_BOUND]["value"] == 0.8 and goals[OF_BOUND]["met"] is True
    assert "40 / bound 50 orders/s" in goals[OF_BOUND]["note"]
    goals = _goals(_capacity(ramps, 210.0))  # bound 60: 40 / 60 = 0.67
    assert goals[OF_BOUND]["value"] == 0.67 and goals[OF_BOUND]["met"] is False


def test_a_ramp_that_sustained_no_rate_counts_as_zero_capacity() -> None:
    goals = _goals(_capacity([_ramp(None, [10.0])] * 3, 156.0))
    assert goals[CAPACITY]["value"] == 0.0 and goals[CAPACITY]["met"] is False


@pytest.mark.parametrize(
    ("rates", "why"),
    [
        ([10.0, 20.0, 30.0], ""),
        ([5.0, 10.0, 20.0, 80.0, 120.0], "step 20 -> 80/s coarser than 10/s"),
        ([10.0, 20.0, 40.0], "step 20 -> 40/s coarser than 10/s"),
        ([20.0, 30.0], "first step 20/s > 10/s"),
        ([70.0, 80.0, 120.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0], ""),
        ([], "no step offered"),
    ],
)
def test_a_ramp_coarser_than_10_per_s_between_10_and_80_is_named(
    rates: list[float | None], why: str
) -> None:
    assert report.ramp_too_coarse(rates) == why


def test_capacity_from_fewer_than_three_ramps_is_not_judged() -> None:
    steps = [10.0, 20.0, 30.0, 40.0, 50.0]
    goals = _goals(_capacity([_ramp(50.0, [*steps, 60.0]), None, _ramp(40.0, steps)], 175.0))
    for name in (CAPACITY, OF_BOUND):
        assert goals[name]["value"] is not None and goals[name]["met"] is None
        assert "2 ramp(s), the goal needs the median of >= 3" in goals[name]["note"]


def test_capacity_from_a_coarse_ramp_is_not_measured() -> None:
    goals = _goals(_capacity([_ramp(40.0, [10.0, 20.0, 40.0, 60.0])] * 3, 156.0))
    for name in (CAPACITY, OF_BOUND):
        assert goals[name]["met"] is None
        assert "ramp too coarse: step 20 -> 40/s" in goals[name]["note"]


DRAIN = "relay drain >= 1x Debezium's"
LATENCY = "relay commit->publish p50 <= Debezium's"


def _debezium(relay: list[float], debezium: list[float], p50s: dict[str, float]) -> dict[str, Any]:
    from bench.debezium import summarize

    results: dict[str, Any] = {
        "runs": {
            "relay": [{"events_per_s": v} for v in relay],
            "debezium": [{"events_per_s": v} for v in debezium],
        },
        "latency": {k: {"p50_ms": v, "p99_ms": 2 * v, "missing": 0} for k, v in p50s.items()},
    }
    results["summary"] = summarize(results)
    return {"phases": ["debezium"], "debezium": results}


def test_relay_against_debezium_uses_run_by_run_drains_and_the_default_configs_p50() -> None:
    p50s = {"relay": 13.0, "debezium": 272.6, "debezium_poll_10ms": 21.5}
    goals = _goals(_debezium([900.0, 150.0, 700.0], [800.0, 1000.0, 600.0], p50s))
    # Per run 1.125, 0.15, 1.167: the median ratio, not 700 / 800 of the medians.
    assert goals[DRAIN]["value"] == 1.125 and goals[DRAIN]["met"] is True
    assert goals[LATENCY]["value"] == 0.05 and goals[LATENCY]["met"] is True
    note = goals[LATENCY]["note"]
    assert "Debezium defaults 272.6 ms" in note and "poll.interval.ms=10: 21.5 ms" in note
    faster = {"relay": 25.0, "debezium": 20.0, "debezium_poll_10ms": 10.0}
    goals = _goals(_debezium([500.0] * 3, [1000.0] * 3, faster))
    assert goals[DRAIN]["value"] == 0.5 and goals[DRAIN]["met"] is False
    assert goals[LATENCY]["value"] == 1.25 and goals[LATENCY]["met"] is False


def test_relay_against_debezium_is_not_measured_with_the_reason_the_phase_recorded() -> None:
    results: dict[str, Any] = {
        "phases": ["debezium"],
        "failures": [
            {"phase": "debezium", "run": None, "step": None, "error": "TimeoutError: connect"}
        ],
    }
    goals = _goals(results)
    for name in (DRAIN, LATENCY):
        assert goals[name]["met"] is None
        assert goals[name]["note"] == "not measured: TimeoutError: connect"
    goals = _goals({"phases": ["relay"]})
    assert goals[DRAIN]["note"] == "not measured: debezium phase not run"


def test_relay_against_debezium_from_fewer_than_three_paired_drains_is_not_judged() -> None:
    goals = _goals(_debezium([900.0, 950.0, 800.0], [800.0, 1000.0], {"relay": 13.0}))
    assert goals[DRAIN]["value"] is not None and goals[DRAIN]["met"] is None
    assert goals[DRAIN]["note"].startswith("2 paired run(s), the goal needs the median of >= 3")


def test_a_debezium_phase_without_a_debezium_figure_fails_the_bench() -> None:
    only_ours = _debezium([900.0], [], {"relay": 13.0})
    assert report.phases_without_figure(only_ours) == ["debezium"]
    both = _debezium([900.0], [800.0], {"relay": 13.0})
    assert report.phases_without_figure(both) == []
    latency_only = _debezium([], [], {"relay": 13.0, "debezium": 200.0})
    assert report.phases_without_figure(latency_only) == []


def test_every_service_is_judged_strictly_below_150_mib() -> None:
    peaks = {name: {"peak_rss_mib": 100.0} for name in SERVICES}
    first, second = SERVICES[0], SERVICES[1]
    peaks[first] = {"peak_rss_mib": 150.0}
    del peaks[second]
    goals = _goals({"memory": peaks})
    assert goals[f"{first} peak RSS < 150 MiB"]["met"] is False
    assert goals[f"{second} peak RSS < 150 MiB"]["met"] is None
    for name in SERVICES[2:]:
        assert goals[f"{name} peak RSS < 150 MiB"]["met"] is True


def test_a_run_from_before_repeated_ramps_is_judged_on_its_one_ramp() -> None:
    results = _capacity([], 175.0)
    results["capacity"] = {"ours": _ramp(None, [10.0]), "bounds": results["capacity"]["bounds"]}
    goals = _goals(results)
    assert goals[CAPACITY]["value"] == 0.0
    assert "1 ramp(s), the goal needs the median of >= 3" in goals[CAPACITY]["note"]
