"""`make bench` finishes within 40 minutes: the default plan's estimate says so, every window of
the plan is in the estimate, and what does not fit runs on request (issue 21)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, cast

import pytest

from bench import capacity, duration
from bench.__main__ import (
    DEFAULT_PHASES,
    OPT_IN_PHASES,
    PHASES,
    _parse_args,
    _plan,
    chosen_phases,
)
from bench.capacity_model import Step, ramp_goes_on
from bench.run import Plan, Run
from stack import Stack


def _total(plan: Plan, phases: Iterable[str], **kwargs: float) -> float:
    return sum(duration.estimate(plan, phases, **kwargs).values())


def test_the_default_full_run_is_estimated_under_40_minutes() -> None:
    seconds = _total(Plan.full(), DEFAULT_PHASES)

    assert seconds < duration.FULL_RUN_LIMIT_SECONDS == 40 * 60
    # Every phase of the default run is counted, the stack too.
    assert set(duration.estimate(Plan.full(), DEFAULT_PHASES)) == {"stack", *DEFAULT_PHASES}


def test_the_default_run_keeps_every_goal_phase_and_leaves_the_scaling_phases_on_request() -> None:
    for goal_phase in ("order_api", "relay", "debezium", "e2e_ours", "capacity"):
        assert goal_phase in DEFAULT_PHASES
    assert {"relays_scaling", "brokers"} <= set(OPT_IN_PHASES)
    assert chosen_phases("all", None) == list(DEFAULT_PHASES)
    assert chosen_phases("capacity", None) == ["capacity"]
    # Asked for by name, in the bench's order whatever the order of the flags.
    assert chosen_phases("all", ["brokers", "relays_scaling"]) == ["relays_scaling", "brokers"]
    # What was left out would not have fitted.
    assert _total(Plan.full(), PHASES) > duration.FULL_RUN_LIMIT_SECONDS


def test_the_full_ramp_steps_every_10_per_s_from_10_to_80_with_three_ramps_of_ours() -> None:
    plan = Plan.full()
    rates = plan.capacity_rates

    assert rates[0] <= 10 and rates[-1] >= 80
    assert all(b - a <= 10 for a, b in itertools.pairwise(rates))
    assert (plan.capacity_repeats, plan.article_capacity_repeats) == (3, 1)
    # A p99 at the first step rests on 200 orders.
    assert rates[0] * plan.capacity_step_seconds >= 200


def test_every_window_of_the_plan_counts_in_the_estimate() -> None:
    plan = Plan.full()
    ramps = plan.capacity_repeats + plan.article_capacity_repeats
    steps = duration.ramp_steps(plan)
    longer_steps = replace(plan, capacity_step_seconds=plan.capacity_step_seconds + 10)
    longer_light = replace(plan, light_seconds=plan.light_seconds + 10)
    longer_load = replace(plan, throughput_seconds=plan.throughput_seconds + 10)

    def capacity(p: Plan) -> float:
        return duration.estimate(p, ["order_api", "capacity"])["capacity"]

    assert capacity(longer_steps) - capacity(plan) == ramps * steps * 10
    # Our light load three times, the article's once.
    light = _total(longer_light, ["e2e_ours", "e2e_article"]) - _total(
        plan, ["e2e_ours", "e2e_article"]
    )
    assert light == (plan.repeats + plan.article_repeats) * 10
    # Raw transaction, wrk and httpx, each run.
    assert _total(longer_load, ["order_api"]) - _total(plan, ["order_api"]) == plan.repeats * 30


def test_a_ramp_is_counted_to_the_step_after_the_goal_and_at_most_every_step() -> None:
    plan = Plan.full()

    # 10 ... 40 sustained, 50 fails.
    assert duration.ramp_steps(plan) == 5
    assert duration.ramp_steps(plan, math.inf) == len(plan.capacity_rates)
    assert _total(plan, DEFAULT_PHASES, ramp_through=math.inf) > _total(plan, DEFAULT_PHASES)


def test_a_drain_counts_at_most_its_bound() -> None:
    # 100,000 events take longer than the 90 s bound at any rate this machine drains.
    slow = replace(Plan.full(), backlog=100_000)
    later = replace(slow, relay_timeout_seconds=slow.relay_timeout_seconds + 10)

    def relay(p: Plan) -> float:
        return duration.estimate(p, ["relay"])["relay"]

    # The raw MongoDB work and our relay run into the bound, each run.
    assert relay(later) - relay(slow) == slow.repeats * 2 * 10
    # A backlog that drains within its bound counts at its rate, not at the bound.
    assert relay(replace(Plan.full(), relay_timeout_seconds=1000)) == relay(Plan.full())


def test_quick_stays_a_smoke_run() -> None:
    assert _total(Plan.quick(), DEFAULT_PHASES) < _total(Plan.full(), DEFAULT_PHASES) / 2.5
    assert Plan.quick().repeats == 1


def test_the_start_of_a_run_prints_the_estimate() -> None:
    text = duration.describe(Plan.full(), DEFAULT_PHASES)

    minutes = math.ceil(_total(Plan.full(), DEFAULT_PHASES) / 60)
    assert text.startswith(f"estimated duration: {minutes} min")
    assert "capacity" in text and "every step up to 80/s" in text


def test_a_phase_without_a_model_is_refused() -> None:
    with pytest.raises(ValueError, match="no duration model for phase"):
        duration.estimate(Plan.full(), ["warp_drive"])


def _step(rate: float, p99: float, incomplete: int = 0) -> Step:
    return Step(rate, rate, int(rate * 20), incomplete, p99)


def test_our_ramp_stops_at_its_first_unsustained_step_the_articles_at_an_incomplete_one() -> None:
    too_slow = _step(30.0, 400.0)
    incomplete = _step(30.0, 120.0, incomplete=3)

    assert ramp_goes_on(_step(20.0, 120.0), held_to_p99=True)
    assert not ramp_goes_on(too_slow, held_to_p99=True)
    assert ramp_goes_on(too_slow, held_to_p99=False)
    assert not ramp_goes_on(incomplete, held_to_p99=False)


def test_the_light_load_goal_has_three_runs_and_the_rest_of_the_e2e_one() -> None:
    plan = Plan.full()

    assert plan.e2e_runs("ours") == (1, 3)
    assert plan.e2e_runs("article") == (1, 1)
    # A light run is long enough for a p99 at 5/s.
    assert plan.light_seconds * 5 >= 200


def test_the_backlog_of_earlier_runs_can_still_be_asked_for() -> None:
    plan = _plan(_parse_args(["--only", "debezium", "--backlog", "20000"]))

    assert plan.backlog == 20_000
    assert _plan(_parse_args([])).backlog == Plan.full().backlog


class _NoStack:
    config = None

    def pids(self) -> dict[str, int]:
        return {}


async def test_the_full_plan_ramps_ours_three_times_and_the_articles_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ramped: list[str] = []

    async def fake_ramp(run: Run, design: str) -> dict[str, Any]:
        ramped.append(design)
        return {"capacity_orders_per_s": 20.0, "steps": []}

    monkeypatch.setattr(capacity, "ramp", fake_ramp)
    run = Run(cast(Stack, _NoStack()), Plan.full(), "unit")
    # The raw transaction rate the bound starts from, as the order API phase leaves it.
    run.results["summary"] = {"raw_txn_per_s": {"median": 100.0}}

    await capacity.run_phase(run)

    assert ramped == ["ours", "article", "ours", "ours"]
    runs = run.results["capacity"]["runs"]
    assert (len(runs["ours"]), len(runs["article"])) == (3, 1)
