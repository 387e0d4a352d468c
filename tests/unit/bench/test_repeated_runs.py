"""Figures measured several times: consumers, end-to-end latencies and relay scaling are each
reported as the spread of their runs, and their ratios are taken run by run."""

from __future__ import annotations

import math

from bench.report import (
    consumers_summary,
    e2e_summary,
    evaluate_goals,
    relays_scaling_summary,
    summarize,
)
from bench.stats import latency_spread, median_run


def test_a_latency_spread_keeps_a_run_with_missing_orders_as_the_slowest() -> None:
    figure = latency_spread([12.0, math.inf, 10.0, None])
    assert figure["median"] == 12.0
    assert figure["min"] == 10.0
    assert math.isinf(figure["max"])
    assert (figure["runs"], figure["failed_runs"]) == (3, 1)


def test_the_run_shown_in_full_is_the_one_with_the_median_figure() -> None:
    assert median_run([30.0, 10.0, 20.0]) == 2
    assert median_run([30.0, None, 10.0, 20.0, 40.0]) == 3  # lower median of four: 20
    assert median_run([None]) is None


def test_our_consumers_are_compared_with_the_articles_run_by_run_at_the_slower_of_the_two() -> None:
    runs = {
        "inventory": [{"msgs_per_s": 100.0}, {"msgs_per_s": 300.0}, {"msgs_per_s": 120.0}],
        "email": [{"msgs_per_s": 200.0}, {"msgs_per_s": 150.0}, {"msgs_per_s": 240.0}],
        "article": [{"msgs_per_s": 50.0}, {"msgs_per_s": 50.0}, {"msgs_per_s": 60.0}],
    }
    summary = consumers_summary({"consumer_runs": runs})
    assert summary["inventory_consumer_msgs_per_s"]["median"] == 120.0
    assert summary["email_consumer_msgs_per_s"]["max"] == 240.0
    # Per run: min(100, 200)/50 = 2, min(300, 150)/50 = 3, min(120, 240)/60 = 2.
    assert summary["consumers_vs_article_consumer"]["per_run"] == [2.0, 3.0, 2.0]
    assert summary["consumers_vs_article_consumer"]["median"] == 2.0


def _e2e(p50: float | str, p99: float | str, *, small: bool = False) -> dict[str, object]:
    distribution = {"p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "small_sample": small}
    return {
        "achieved_rate": 5.0,
        "reservation": distribution,
        "email": distribution,
        "reservation_from_201": distribution,
        "published": distribution,
    }


def test_end_to_end_percentiles_are_spread_over_runs_and_the_article_ratio_is_per_run() -> None:
    results = {
        "e2e_runs": {
            "ours": [_e2e(10.0, 40.0), _e2e(30.0, 90.0), _e2e(20.0, "inf")],
            "article": [_e2e(100.0, 400.0), _e2e(90.0, 500.0), _e2e(400.0, 900.0)],
        }
    }
    summary = e2e_summary(results)
    reservation = summary["e2e"]["ours"]["reservation"]
    assert reservation["p50_ms"] == {
        "median": 20.0, "min": 10.0, "max": 30.0, "runs": 3, "failed_runs": 0,
    }  # fmt: skip
    # A run whose p99 is infinite (orders missing) is the slowest, not dropped.
    assert math.isinf(reservation["p99_ms"]["max"])
    assert reservation["p99_ms"]["median"] == 90.0
    # Run by run: 100/10, 90/30, 400/20; not the medians' 100/20.
    ratio = summary["article_vs_ours_reservation_p50"]
    assert ratio["per_run"] == [10.0, 3.0, 20.0]
    assert ratio["median"] == 10.0
    assert "article_vs_ours_light_reservation_p50" not in summary


def test_the_light_load_goals_show_the_median_run_but_judge_no_run_of_a_small_sample() -> None:
    results: dict[str, object] = {
        "e2e_runs": {
            "ours_light": [_e2e(12.0, 30.0), _e2e(14.0, 35.0), _e2e(20.0, 80.0, small=True)]
        },
        "failures": [],
    }
    results["summary"] = summarize(results)
    goals = {g["goal"]: g for g in evaluate_goals(results)}
    # The goal is defined on >= 200 samples a run: shown, not judged, when a run had fewer.
    p50 = goals["light 201->reservation p50 <= 15 ms"]
    assert p50["value"] == 14.0
    assert p50["met"] is None and "fewer than 200 samples" in p50["note"]
    p99 = goals["light 201->reservation p99 <= 40 ms"]
    assert p99["met"] is None and "fewer than 200 samples" in p99["note"]


def test_relay_scaling_is_the_spread_of_each_count_and_its_speedup_run_by_run() -> None:
    def drain(rate: float) -> dict[str, float]:
        return {"steady_events_per_s": rate}

    results = {
        "relays_scaling": {
            "runs": {
                "1": [drain(400.0), drain(500.0), drain(300.0)],
                "2": [drain(600.0), drain(500.0), drain(450.0)],
            }
        }
    }
    summary = relays_scaling_summary(results)["relays_scaling"]
    assert summary["1"]["steady_events_per_s"]["median"] == 400.0
    assert "speedup_vs_one_relay" not in summary["1"]
    assert summary["2"]["speedup_vs_one_relay"]["per_run"] == [1.5, 1.0, 1.5]


def test_capacity_goal_uses_the_recorded_baseline_and_no_sustained_rate_is_not_met() -> None:
    from bench.report import capacity_vs_baseline_goal

    ramp = {"capacity_orders_per_s": 50.0, "steps": [{"offered_rate": 50.0}]}
    assert capacity_vs_baseline_goal(ramp, None)["met"] is None
    met = capacity_vs_baseline_goal(ramp, 20.0)
    assert (met["value"], met["met"]) == (2.5, True)
    assert "baseline 20 orders/s" in met["note"]
    nothing = capacity_vs_baseline_goal({"capacity_orders_per_s": None, "steps": [{}]}, 20.0)
    assert (nothing["value"], nothing["met"]) == (0.0, False)
    assert capacity_vs_baseline_goal(None, 20.0)["met"] is None


def test_repeated_capacity_ramps_give_a_spread_and_the_article_ratio_ramp_by_ramp() -> None:
    def ramp(capacity: float | None) -> dict[str, object]:
        return {"capacity_orders_per_s": capacity, "steps": [{}]}

    results: dict[str, object] = {
        "capacity": {
            "runs": {
                "ours": [ramp(40.0), ramp(60.0), ramp(20.0)],
                "article": [ramp(10.0), ramp(None), ramp(10.0)],
            }
        },
        "failures": [],
    }
    results["summary"] = summarize(results)
    summary = results["summary"]
    assert isinstance(summary, dict)
    assert summary["capacity_ours_orders_per_s"]["median"] == 40.0
    # The article's second ramp sustained nothing: no ratio for that run, not a zero.
    assert summary["capacity_vs_article"]["per_run"] == [4.0, None, 2.0]
    goals = {g["goal"]: g for g in evaluate_goals(results)}
    assert goals["capacity >= 5x article's"]["value"] == 3.0
    assert goals["capacity >= 5x article's"]["met"] is False


async def test_a_watch_loop_that_lost_its_cancellation_still_ends_on_its_flag() -> None:
    import asyncio

    from bench.e2e_latency import end_watch_task

    stopping = asyncio.Event()
    wakeups = 0

    async def loop() -> None:
        nonlocal wakeups
        while not stopping.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                wakeups += 1  # swallowed, as a driver's wait_for can on Python 3.11

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.02)
    await asyncio.wait_for(end_watch_task(task, stopping), 2)
    assert task.done()
    assert wakeups == 1
