"""The rules every benchmark figure follows: percentiles, spread, schedule, ramp verdict, bound."""

from __future__ import annotations

import math

import pytest

from bench.capacity_model import Step, capacity_bound, order_costs, ramp_capacity, step_sustained
from bench.stats import (
    MIN_SAMPLES_FOR_P99,
    Distribution,
    achieved_rate,
    open_loop_schedule,
    percentile,
    ratio_spread,
    spread,
)


def test_nearest_rank_p99_of_75_samples_is_the_maximum_and_is_flagged() -> None:
    values = [float(v) for v in range(1, 76)]
    assert percentile(values, 99) == 75.0
    assert Distribution.of(values, missing=0).small_sample is True
    enough = Distribution.of([1.0] * MIN_SAMPLES_FOR_P99, missing=0)
    assert enough.small_sample is False


def test_a_missing_order_counts_as_infinitely_late() -> None:
    distribution = Distribution.of([10.0] * 98, missing=2)
    assert distribution.p50_ms == 10.0
    assert math.isinf(distribution.p99_ms)
    assert distribution.missing == 2


def test_spread_is_median_min_max_of_the_runs_that_produced_a_figure() -> None:
    assert spread([3.0, None, 1.0, 2.0]) == {
        "median": 2.0, "min": 1.0, "max": 3.0, "runs": 3, "failed_runs": 1,
    }  # fmt: skip
    assert spread([None])["median"] is None


def test_ratios_are_taken_run_by_run_before_the_median() -> None:
    # Medians of each side would give 20/10 = 2.0; the per-run ratios are 1, 4 and 1.5.
    result = ratio_spread([10.0, 20.0, 30.0], [10.0, 5.0, 20.0])
    assert result["per_run"] == [1.0, 4.0, 1.5]
    assert result["median"] == 1.5


def test_open_loop_schedule_is_fixed_by_rate_not_by_answers() -> None:
    assert open_loop_schedule(4.0, 1.0) == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="positive"):
        open_loop_schedule(0.0, 1.0)


def test_achieved_rate_counts_only_sends_inside_the_window() -> None:
    # 10 sends planned over 1 s; the sender fell behind and sent the last 4 after the window.
    sent_at = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.3, 1.4, 1.5, 1.6]
    assert achieved_rate(sent_at, 1.0) == 6.0


def _step(rate: float, *, incomplete: int = 0, p99: float = 100.0, cap: int = 0) -> Step:
    return Step(rate, rate, int(rate * 30), incomplete, p99, cap)


def test_capacity_is_the_highest_rate_sustained_before_the_first_failure() -> None:
    steps = [_step(10), _step(20), _step(40, p99=300.0), _step(60)]
    assert ramp_capacity(steps) == 20
    assert ramp_capacity([_step(10, incomplete=1)]) is None


def test_a_step_fails_on_one_incomplete_order_a_slow_p99_or_a_closed_loop() -> None:
    assert step_sustained(_step(10)) == (True, "sustained")
    assert "did not complete" in step_sustained(_step(10, incomplete=1))[1]
    assert "p99" in step_sustained(_step(10, p99=math.inf))[1]
    assert "in-flight cap" in step_sustained(_step(10, cap=3))[1]


def test_capacity_bound_divides_the_raw_transaction_rate_by_the_counted_cost() -> None:
    ours, article = order_costs(relay_batch=1.0)
    # The relay's fenced mark writes the event and the slot's fence document.
    assert (ours.commits, ours.writes) == (3.0, 7.0)
    bound = capacity_bound(600.0, ours)
    # min(600 / 3 commits = 200, 600 * 2 writes / 7 writes = 171.4) = 171.4.
    assert bound["bound_orders_per_s"] == 171.4
    assert "600.0 txn/s / 3.00 commits = 200.0" in bound["arithmetic"]
    batched, _ = order_costs(relay_batch=10.0)
    # min(600 / 2.1 = 285.7, 1200 / 6.1 = 196.7): writes bind.
    assert capacity_bound(600.0, batched)["bound_orders_per_s"] == 196.7
    assert article.commits == 3.0


def test_article_relay_rounds_start_at_a_fixed_rate_and_an_overrun_starts_the_next_at_once() -> (
    None
):
    from bench.article_relay import next_round_due

    # A 100 ms round due at 0: the next is due at 500 ms, not 100 + 500.
    assert next_round_due(0.0, 0.1) == 0.5
    # A round that took 700 ms: the next starts at once (700 ms), never two at a time.
    assert next_round_due(0.0, 0.7) == 0.7


WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8000
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    98.12ms   20.01ms 201.33ms   70.00%
    Req/Sec   160.00     20.00   200.00     70.00%
  642 requests in 2.01s, 250.00KB read
  Socket errors: connect 0, read 0, write 0, timeout 2
  Non-2xx or 3xx responses: 42
Requests/sec:    319.40
Transfer/sec:    124.38KB
"""


def test_wrk_orders_count_only_2xx_answers_over_the_measured_time() -> None:
    from bench.order_api import parse_wrk

    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed["orders"] == 600
    assert parsed["orders_per_s"] == round(600 / 2.01, 1)
    assert parsed["failed"] == 44
    with pytest.raises(ValueError, match="no request count"):
        parse_wrk("wrk: connection refused")


def test_an_order_is_incomplete_without_its_reservation_its_email_or_its_cancellation() -> None:
    from bench.e2e_latency import LatencyResult

    result = LatencyResult(design="ours", target_rate=10.0, duration_seconds=1.0, created=10)
    result.orders_incomplete = 2
    result.cancellations_incomplete = 1
    assert result.incomplete() == 3


def test_without_a_latency_limit_the_ramp_measures_the_highest_rate_completing_every_order() -> (
    None
):
    # The article's 500 ms poll fails the 250 ms p99 at every rate, yet completes up to 40/s.
    steps = [
        _step(10, p99=600.0),
        _step(20, p99=700.0),
        _step(40, p99=900.0),
        _step(60, incomplete=5),
    ]
    assert ramp_capacity(steps) is None
    assert ramp_capacity(steps, math.inf) == 40
