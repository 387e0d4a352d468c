"""The benchmark's output: ratios, goals, a terminal table and ``bench-results.json``.

Every ratio is computed here from figures of the same run (the ``results`` dictionary the
orchestrator filled), never from a remembered or documented number. A figure that a phase did not
produce is shown as ``n/a`` and its ratio and goal as "not measured".
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from bench.stats import latency_spread, ratio_spread, spread
from stack.config import SERVICES

# The goals (issue 13).
GOAL_CAPACITY_VS_BASELINE: Final = 2.0
GOAL_CAPACITY_VS_ARTICLE: Final = 5.0
GOAL_RELAY_VS_ARTICLE: Final = 20.0
GOAL_RELAY_VS_RAW_MONGO: Final = 0.5
GOAL_API_VS_RAW: Final = 0.6
GOAL_LIGHT_P50_MS: Final = 15.0
GOAL_LIGHT_P99_MS: Final = 40.0
GOAL_SERVICE_RSS_MIB: Final = 150.0
# Issue 21's goals besides those above: each a median of at least this many runs.
GOAL_MIN_RUNS: Final = 3
GOAL_CAPACITY_ORDERS_PER_S: Final = 40.0
GOAL_CAPACITY_VS_BOUND: Final = 0.75
# The ramp that measures capacity: steps no coarser than RAMP_STEP between RAMP_FROM and RAMP_TO.
RAMP_FROM: Final = 10.0
RAMP_TO: Final = 80.0
RAMP_STEP: Final = 10.0
GOAL_RELAY_VS_DEBEZIUM: Final = 1.0
# Ours over Debezium's (default configuration): at most 1, i.e. no slower.
GOAL_RELAY_P50_VS_DEBEZIUM: Final = 1.0
# Our capacity measured by this method on the code before any capacity work: the quiet-machine
# ramp of main at 12baa34 with the two capacity commits (60a7906, 23c5a18) reverted,
# docs/bench-runs/quiet-baseline.json (10/s sustained; 20/s missed the p99 limit at 274.5 ms).
CAPACITY_BASELINE_ORDERS_PER_S: Final[float | None] = 10.0
# Where that figure comes from, shown with the goal.
CAPACITY_BASELINE_SOURCE: Final = "docs/bench-runs/quiet-baseline.json"
# Issue 21: total CPU per completed order (every process, the bench's included) at light load
# (our design, 5/s: a fixed rate, so runs compare), median of the light runs, on main before
# any change of the issue: main at 2d957c6, three light runs of 200 orders (82.2-83.6 ms), taken
# while other sessions loaded the machine (load average 18.9); docs/benchmarks.md "CPU per order".
GOAL_CPU_VS_BASELINE: Final = 0.5
CPU_PER_ORDER_BASELINE_MS: Final[float | None] = 82.75
CPU_PER_ORDER_BASELINE_SOURCE: Final = "docs/bench-runs/cpu-baseline.json"


def get(results: dict[str, Any], *path: str) -> Any:
    """``results[a][b]...`` or None when any step is missing."""
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _figures(runs: Any, key: str) -> list[float | None]:
    """``key`` of each run (None for a run without it)."""
    if not isinstance(runs, list):
        return []
    values: list[float | None] = []
    for one in runs:
        value = one.get(key) if isinstance(one, dict) else None
        values.append(float(value) if isinstance(value, int | float) else None)
    return values


# The end-to-end latencies each run reports, and the percentiles summarised over runs.
E2E_TARGETS: Final = ("published", "reservation", "email", "verdict", "reservation_from_201")
E2E_PERCENTILES: Final = ("p50_ms", "p95_ms", "p99_ms")


def _latency(value: Any) -> float | None:
    """A latency read back from a run: a number, ``inf`` (missing orders; ``"inf"`` once it
    went through the JSON file), or None."""
    if isinstance(value, int | float):
        return float(value)
    return math.inf if value == "inf" else None


def consumers_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Each consumer's drain rate as the spread of its runs, and our consumers against the
    article's run by run: ours is the slower of inventory and email (two services working in
    parallel), the article's one consumer does both side effects."""
    runs = get(results, "consumer_runs") or {}
    rates = {name: _figures(items, "msgs_per_s") for name, items in runs.items()}
    summary: dict[str, Any] = {
        f"{name}_consumer_msgs_per_s": spread(values) for name, values in rates.items()
    }
    inventory, email, article = (rates.get(n) or [] for n in ("inventory", "email", "article"))
    count = min(len(inventory), len(email), len(article))
    if count:
        ours = [
            None if i is None or e is None else min(i, e)
            for i, e in zip(inventory[:count], email[:count], strict=True)
        ]
        summary["consumers_vs_article_consumer"] = ratio_spread(ours, article[:count])
    return summary


def e2e_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Every end-to-end percentile as the spread of its runs (``e2e``), and the article's p50
    over ours run by run (run i of each design), at load and at the light rate."""
    runs = get(results, "e2e_runs") or {}
    per_design: dict[str, Any] = {}
    for key, items in runs.items():
        if not isinstance(items, list):
            continue
        entry: dict[str, Any] = {
            "runs": len(items),
            "achieved_rate": spread(_figures(items, "achieved_rate")),
            # A lost order (never arrived, even after the grace period) is a bug in any run.
            "lost_orders": sum(
                int((one.get(f"missing_{step}") or {}).get("lost", 0))
                for one in items
                if isinstance(one, dict)
                for step in ("reservation", "email", "verdict")
            ),
        }
        for target in E2E_TARGETS:
            dists = [(one.get(target) or {}) if isinstance(one, dict) else {} for one in items]
            entry[target] = {
                p: latency_spread([_latency(d.get(p)) for d in dists]) for p in E2E_PERCENTILES
            }
            entry[target]["small_sample"] = any(d.get("small_sample") for d in dists)
        per_design[key] = entry
    summary: dict[str, Any] = {"e2e": per_design} if per_design else {}
    for suffix in ("", "_light"):
        ours, article = runs.get(f"ours{suffix}") or [], runs.get(f"article{suffix}") or []
        count = min(len(ours), len(article))
        for target in ("reservation", "email"):
            if not count:
                continue

            def p50s(items: list[Any], target: str = target) -> list[float | None]:
                return [
                    _latency((one.get(target) or {}).get("p50_ms"))
                    if isinstance(one, dict)
                    else None
                    for one in items
                ]

            summary[f"article_vs_ours{suffix}_{target}_p50"] = ratio_spread(
                p50s(article[:count]), p50s(ours[:count])
            )
    return summary


def relays_scaling_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per relay-process count: the steady drain rate's spread, and its speedup over one
    process run by run (repeat i of N processes against repeat i of one)."""
    runs = get(results, "relays_scaling", "runs") or {}
    rates = {count: _figures(items, "steady_events_per_s") for count, items in runs.items()}
    one = rates.get("1") or []
    summary: dict[str, Any] = {}
    for count, values in rates.items():
        entry: dict[str, Any] = {"steady_events_per_s": spread(values)}
        if one and count != "1":
            n = min(len(values), len(one))
            entry["speedup_vs_one_relay"] = ratio_spread(values[:n], one[:n])
        summary[count] = entry
    return {"relays_scaling": summary} if summary else {}


def capacity_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Each design's capacity as the spread of its ramps, and ours over the article's ramp by
    ramp (a ramp that sustained no rate has no capacity: it counts as a failed run)."""
    runs = get(results, "capacity", "runs") or {}
    ours = _figures(runs.get("ours"), "capacity_orders_per_s")
    article = _figures(runs.get("article"), "capacity_orders_per_s")
    summary: dict[str, Any] = {}
    if ours:
        summary["capacity_ours_orders_per_s"] = spread(ours)
    if article:
        summary["capacity_article_orders_per_s"] = spread(article)
    count = min(len(ours), len(article))
    if count:
        summary["capacity_vs_article"] = ratio_spread(ours[:count], article[:count])
    return summary


def _cpu_of(items: Any) -> list[dict[str, Any]]:
    """The CPU figure of each run (an empty one for a run without it)."""
    if not isinstance(items, list):
        return []
    return [(one.get("cpu") or {}) if isinstance(one, dict) else {} for one in items]


def cpu_summary(results: dict[str, Any]) -> dict[str, Any]:
    """CPU per completed order: at light load, the spread over the runs of the total, of the
    stack's share (without the bench's process), of the bound it implies and of each process;
    in the capacity ramp, each step of the ramp shown (``capacity[design]``)."""
    summary: dict[str, Any] = {}
    for key, items in (get(results, "e2e_runs") or {}).items():
        figures = [f for f in _cpu_of(items) if f]
        if not figures:
            continue
        processes = sorted({name for f in figures for name in (f.get("per_order_ms") or {})})
        summary[key] = {
            "total_ms_per_order": spread(_figures(figures, "total_ms_per_order")),
            "stack_ms_per_order": spread(_figures(figures, "stack_ms_per_order")),
            "bound_orders_per_s": spread(_figures(figures, "bound_orders_per_s")),
            "per_order_ms": {
                name: spread([(f.get("per_order_ms") or {}).get(name) for f in figures])["median"]
                for name in processes
            },
        }
    for design in ("ours", "article"):
        steps = get(results, "capacity", design, "steps") or []
        rows = [
            {
                "offered_rate": step.get("offered_rate"),
                "total_ms_per_order": get(step, "cpu", "total_ms_per_order"),
                "bound_orders_per_s": get(step, "cpu", "bound_orders_per_s"),
                "per_order_ms": get(step, "cpu", "per_order_ms"),
            }
            for step in steps
            if isinstance(step, dict) and isinstance(step.get("cpu"), dict)
        ]
        if rows:
            summary[f"capacity_{design}"] = rows
    return {"cpu_per_order": summary} if summary else {}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Every throughput as the spread (median, min, max) of its runs, and every ratio taken run
    by run. The API figure of the ratio is wrk's when wrk ran, else httpx's (said in
    ``api_load_generator``)."""
    summary: dict[str, Any] = {}
    api = get(results, "order_api_runs") or {}
    raw_txn = _figures(api.get("raw_txn"), "txn_per_s")
    wrk = _figures(api.get("api_wrk"), "orders_per_s")
    httpx = _figures(api.get("api_httpx"), "orders_per_s")
    if raw_txn:
        use_wrk = any(v is not None for v in wrk)
        api_figures = wrk if use_wrk else httpx
        summary.update(
            raw_txn_per_s=spread(raw_txn),
            api_wrk_orders_per_s=spread(wrk),
            api_httpx_orders_per_s=spread(httpx),
            api_orders_per_s=spread(api_figures),
            api_load_generator="wrk" if use_wrk else "httpx",
            api_vs_raw_txn=ratio_spread(api_figures, raw_txn),
        )
    relay = get(results, "relay_runs") or {}
    if relay:
        producer = _figures(relay.get("raw_producer"), "msgs_per_s")
        mongo = _figures(relay.get("raw_mongo"), "events_per_s")
        ours = _figures(relay.get("relay"), "events_per_s")
        article = _figures(relay.get("article_relay"), "events_per_s")
        summary.update(
            raw_producer_msgs_per_s=spread(producer),
            raw_mongo_relay_events_per_s=spread(mongo),
            relay_events_per_s=spread(ours),
            article_relay_events_per_s=spread(article),
            relay_vs_article_relay=ratio_spread(ours, article),
            relay_vs_raw_producer=ratio_spread(ours, producer),
            relay_vs_raw_mongo=ratio_spread(ours, mongo),
        )
    summary.update(consumers_summary(results))
    summary.update(e2e_summary(results))
    summary.update(relays_scaling_summary(results))
    summary.update(capacity_summary(results))
    summary.update(cpu_summary(results))
    return summary


def _goal(
    name: str, value: Any, target: float, higher_is_better: bool, unit: str = "", note: str = ""
) -> dict[str, Any]:
    if not isinstance(value, int | float) or math.isnan(value):
        return {"goal": name, "value": None, "target": target, "met": None, "note": note}
    met = value >= target if higher_is_better else value <= target
    return {"goal": name, "value": value, "target": target, "met": met, "unit": unit, "note": note}


def capacity_vs_baseline_goal(ramp: Any, baseline: float | None) -> dict[str, Any]:
    """Our capacity over the recorded baseline (``baseline`` orders/s). A ramp that sustained
    no rate at all has capacity 0 here, so the goal is not met rather than not measured."""
    name = "capacity >= 2x today's"
    if not baseline:
        return _goal(name, None, GOAL_CAPACITY_VS_BASELINE, True, "x", "baseline not recorded yet")
    source = f"baseline {baseline:g} orders/s" + (
        f" ({CAPACITY_BASELINE_SOURCE})" if CAPACITY_BASELINE_SOURCE else ""
    )
    if not isinstance(ramp, dict) or not ramp.get("steps"):
        return _goal(name, None, GOAL_CAPACITY_VS_BASELINE, True, "x", "ramp not run; " + source)
    capacity = ramp.get("capacity_orders_per_s")
    if not isinstance(capacity, int | float):
        capacity, source = 0.0, "no rate of the ramp sustained; " + source
    return _goal(name, _ratio(capacity, baseline), GOAL_CAPACITY_VS_BASELINE, True, "x", source)


def cpu_vs_baseline_goal(summary: dict[str, Any], baseline_ms: float | None) -> dict[str, Any]:
    """Total CPU per order at light load (ours, median of the runs) over the baseline."""
    name = "total CPU per order <= 0.5x baseline"
    if not baseline_ms:
        return _goal(name, None, GOAL_CPU_VS_BASELINE, False, "x", "baseline not recorded yet")
    value = get(summary, "cpu_per_order", "ours_light", "total_ms_per_order", "median")
    note = f"baseline {baseline_ms:g} ms/order at 5/s ({CPU_PER_ORDER_BASELINE_SOURCE})"
    if not isinstance(value, int | float):
        note = "light run not measured; " + note
        return _goal(name, None, GOAL_CPU_VS_BASELINE, False, "x", note)
    note = f"{value:g} ms/order now; " + note
    return _goal(name, _ratio(value, baseline_ms), GOAL_CPU_VS_BASELINE, False, "x", note)


def evaluate_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue with this run's value and whether it is met (None: not measured,
    with the reason in ``note``)."""
    summary = results.get("summary") or {}
    ours_cap = get(results, "capacity", "ours", "capacity_orders_per_s")
    article_cap = get(results, "capacity", "article", "capacity_orders_per_s")
    # Ramp by ramp when the ramps were repeated (each of ours against the article's next).
    vs_article = (
        get(summary, "capacity_vs_article", "median")
        if get(summary, "capacity_vs_article", "runs")
        else _ratio(ours_cap, article_cap)
    )
    goals = [
        capacity_vs_baseline_goal(get(results, "capacity", "ours"), CAPACITY_BASELINE_ORDERS_PER_S),
        _goal(
            "capacity >= 5x article's",
            vs_article,
            GOAL_CAPACITY_VS_ARTICLE,
            True,
            "x",
            ""
            if vs_article is not None
            else "the article sustained no rate of the ramp within the p99 limit (or not run)",
        ),
        _goal(
            "relay >= 20x article relay",
            get(summary, "relay_vs_article_relay", "median"),
            GOAL_RELAY_VS_ARTICLE,
            True,
            "x",
        ),
        _goal(
            "relay >= 0.5x raw MongoDB relay work",
            get(summary, "relay_vs_raw_mongo", "median"),
            GOAL_RELAY_VS_RAW_MONGO,
            True,
            "x",
        ),
        _goal(
            "API >= 0.6x raw transaction (wrk)",
            get(summary, "api_vs_raw_txn", "median")
            if summary.get("api_load_generator") == "wrk"
            else None,
            GOAL_API_VS_RAW,
            True,
            "x",
            ""
            if summary.get("api_load_generator") == "wrk"
            else ("wrk did not run" if summary.get("api_load_generator") else "phase not run"),
        ),
    ]
    goals += light_load_goals(summary)
    goals += capacity_goals(results)
    goals.append(cpu_vs_baseline_goal(summary, CPU_PER_ORDER_BASELINE_MS))
    goals += debezium_goals(results)
    goals += memory_goals(get(results, "memory"))
    return goals


def _not_judged(goal: dict[str, Any], why: str) -> dict[str, Any]:
    """``goal`` with its value shown but not judged (``met`` None), ``why`` leading its note."""
    return {**goal, "met": None, "note": "; ".join(n for n in (why, goal.get("note")) if n)}


def light_load_goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """201 -> reservation at 5/s: p50 and p99, each the median over the light runs of ours.
    Measured only with at least :data:`GOAL_MIN_RUNS` runs of at least 200 samples each (a
    smaller sample's p99 is its maximum); the value is shown either way."""
    light = get(summary, "e2e", "ours_light", "reservation_from_201") or {}
    runs = get(summary, "e2e", "ours_light", "runs") or 0
    why_not = ""
    if not light:
        why_not = "light runs not measured"
    elif light.get("small_sample") is True:
        why_not = "a run had fewer than 200 samples"
    elif runs < GOAL_MIN_RUNS:
        why_not = f"{runs} light run(s), the goal needs the median of >= {GOAL_MIN_RUNS}"
    goals = []
    for percentile, target in (("p50", GOAL_LIGHT_P50_MS), ("p99", GOAL_LIGHT_P99_MS)):
        figure = light.get(f"{percentile}_ms") or {}
        median = figure.get("median")
        name = f"light 201->reservation {percentile} <= {target:g} ms"
        arithmetic = (
            f"median of {figure.get('runs')} runs {_fmt(median)} ms "
            f"(min {_fmt(figure.get('min'))}, max {_fmt(figure.get('max'))})"
            if median is not None
            else ""
        )
        goal = _goal(name, median, target, False, "ms", arithmetic)
        goals.append(_not_judged(goal, why_not) if why_not else goal)
    return goals


def ramp_too_coarse(rates: list[float | None]) -> str:
    """Why a ramp's offered rates do not measure capacity finely enough between
    :data:`RAMP_FROM` and :data:`RAMP_TO` orders/s (empty: fine enough): its first step must be
    at most ``RAMP_FROM`` and each step below ``RAMP_TO`` at most ``RAMP_STEP`` below the next."""
    ordered = sorted(r for r in rates if r is not None)
    if not ordered:
        return "no step offered"
    if ordered[0] > RAMP_FROM:
        return f"first step {ordered[0]:g}/s > {RAMP_FROM:g}/s"
    for low, high in itertools.pairwise(ordered):
        if low < RAMP_TO and high - low > RAMP_STEP:
            return f"step {low:g} -> {high:g}/s coarser than {RAMP_STEP:g}/s"
    return ""


def capacity_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Sustained capacity of ours (median over its ramps; a ramp that sustained no rate counts
    as 0) against :data:`GOAL_CAPACITY_ORDERS_PER_S`, and over the MongoDB bound of our design
    printed in the same run against :data:`GOAL_CAPACITY_VS_BOUND`. Fewer than
    :data:`GOAL_MIN_RUNS` ramps, or a ramp coarser than 10/s between 10 and 80 (it may have
    stepped over the capacity), leave both not measured."""
    # Runs before repeated ramps kept only the one ramp.
    ramps = [
        r
        for r in get(results, "capacity", "runs", "ours") or [get(results, "capacity", "ours")]
        if isinstance(r, dict) and r.get("steps")
    ]
    capacities = [float(r.get("capacity_orders_per_s") or 0.0) for r in ramps]
    median = spread(capacities)["median"] if capacities else None
    name = f"capacity >= {GOAL_CAPACITY_ORDERS_PER_S:g} orders/s"
    bound_name = f"capacity >= {GOAL_CAPACITY_VS_BOUND:g}x MongoDB bound"
    coarse = [why for r in ramps if (why := ramp_too_coarse(_figures(r["steps"], "offered_rate")))]
    why_not = "" if ramps else "ramp of ours not run"
    if ramps and len(ramps) < GOAL_MIN_RUNS:
        why_not = f"{len(ramps)} ramp(s), the goal needs the median of >= {GOAL_MIN_RUNS}"
    if coarse:
        why_not = "ramp too coarse: " + coarse[0]
    arithmetic = (
        f"median of {len(capacities)} ramps ({', '.join(f'{c:g}' for c in capacities)}) "
        f"= {median:g} orders/s"
        if median is not None
        else ""
    )
    capacity = _goal(name, median, GOAL_CAPACITY_ORDERS_PER_S, True, " orders/s", arithmetic)
    bound = next(
        (b for b in get(results, "capacity", "bounds") or [] if b.get("design") == "ours"), None
    )
    share = _ratio(median, get(bound, "bound_orders_per_s")) if bound else None
    share_note = (
        f"{median:g} / bound {bound['bound_orders_per_s']:g} orders/s "
        f"[{bound['arithmetic']}] = {share:g}"
        if bound and share is not None and median is not None
        else ("no MongoDB bound in this run" if not bound else "")
    )
    of_bound = _goal(bound_name, share, GOAL_CAPACITY_VS_BOUND, True, "x", share_note)
    if why_not:
        return [_not_judged(capacity, why_not), _not_judged(of_bound, why_not)]
    return [capacity, of_bound]


def _phase_failure(results: dict[str, Any], phase: str) -> str:
    """The recorded errors of ``phase`` (``step: error``), joined."""
    return "; ".join(
        (f"{f['step']}: " if f.get("step") else "") + str(f.get("error"))
        for f in results.get("failures") or []
        if isinstance(f, dict) and f.get("phase") == phase
    )


def debezium_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Our relay against Debezium in the same run: the drain ratio (median of the run-by-run
    ratios, at least :data:`GOAL_MIN_RUNS` paired runs) against 1.0, and our commit -> publish
    p50 over Debezium's with its default configuration against 1.0 (the tuned
    ``poll.interval.ms=10`` figure shown beside it; the phase measures latency once). When the
    phase did not run or produced no figure, both are not measured with the recorded reason."""
    drain_name = f"relay drain >= {GOAL_RELAY_VS_DEBEZIUM:g}x Debezium's"
    p50_name = "relay commit->publish p50 <= Debezium's"
    summary = get(results, "debezium", "summary") or {}
    failed = _phase_failure(results, "debezium")
    if "debezium" not in (results.get("phases") or []) and not summary:
        reason = "debezium phase not run"
    else:
        reason = failed or "no figure"
    drain = summary.get("relay_over_debezium") or {}
    paired = drain.get("runs") or 0
    relay_rate = _fmt(get(summary, "relay_events_per_s", "median"))
    debezium_rate = _fmt(get(summary, "debezium_events_per_s", "median"))
    drain_note = (
        f"per run {drain.get('per_run')}: relay {relay_rate} / Debezium {debezium_rate} ev/s"
        " (medians)"
        if drain.get("median") is not None
        else "not measured: " + reason
    )
    ours = get(summary, "relay_commit_to_publish_ms", "p50")
    theirs = get(summary, "debezium_commit_to_publish_ms", "p50")
    tuned = get(summary, "debezium_poll_10ms_commit_to_publish_ms", "p50")
    over = _ratio(ours, theirs)
    p50_note = (
        f"relay {_fmt(ours)} / Debezium defaults {_fmt(theirs)} ms = {over:g}; "
        f"Debezium poll.interval.ms=10: {_fmt(tuned)} ms"
        + (f" ({_ratio(ours, tuned):g}x)" if _ratio(ours, tuned) is not None else "")
        if over is not None
        else "not measured: " + reason
    )
    drain_goal = _goal(
        drain_name, drain.get("median"), GOAL_RELAY_VS_DEBEZIUM, True, "x", drain_note
    )
    if drain_goal["met"] is not None and paired < GOAL_MIN_RUNS:
        why_not = f"{paired} paired run(s), the goal needs the median of >= {GOAL_MIN_RUNS}"
        drain_goal = _not_judged(drain_goal, why_not)
    return [drain_goal, _goal(p50_name, over, GOAL_RELAY_P50_VS_DEBEZIUM, False, "x", p50_note)]


def memory_goals(memory: Any) -> list[dict[str, Any]]:
    """Each service's peak RSS over the whole run against :data:`GOAL_SERVICE_RSS_MIB`
    (strictly below it)."""
    goals = []
    for service in SERVICES:
        peak = get(memory, service, "peak_rss_mib") if isinstance(memory, dict) else None
        goal = _goal(
            f"{service} peak RSS < {GOAL_SERVICE_RSS_MIB:g} MiB",
            peak,
            GOAL_SERVICE_RSS_MIB,
            False,
            " MiB",
            "" if isinstance(peak, int | float) else "no peak read for it",
        )
        if goal["met"] and peak == GOAL_SERVICE_RSS_MIB:
            goal["met"] = False
        goals.append(goal)
    return goals


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if not isinstance(numerator, int | float) or not isinstance(denominator, int | float):
        return None
    if denominator <= 0 or math.isinf(numerator) or math.isnan(numerator):
        return None
    return round(numerator / denominator, 2)


def versions(mongo_server: str) -> dict[str, Any]:
    """What was measured: Kafka, SecantusDB, Python and the project's commit."""
    from importlib.metadata import PackageNotFoundError, version

    from stack.versions import KAFKA_VERSION

    try:
        secantus = version("SecantusDB")
    except PackageNotFoundError:
        secantus = "unknown"
    commit = _run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "HEAD"])
    dirty = _run(["git", "-C", str(Path(__file__).resolve().parents[1]), "status", "--porcelain"])
    return {
        "kafka": KAFKA_VERSION,
        "secantusdb": secantus,
        "mongo_server": mongo_server,
        "python": platform.python_version(),
        "commit": commit,
        "worktree_dirty": bool(dirty) and dirty != "unavailable",
    }


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (done.stdout + done.stderr).strip()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: cores, memory, CPU model, Python and Java versions."""
    cpu = "unknown"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    java = _run(["java", "-version"]).splitlines()
    return {
        "nproc": _run(["nproc"]),
        "memory": _run(["free", "-h"]),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "java": java[0] if java else "unavailable",
        "kernel": platform.release(),
        # The machine may be shared: the 1/5/15-minute load says how much else was running.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isinf(value):
            return "> timeout"
        if math.isnan(value):
            return "n/a"
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def _spread_text(figure: Any, unit: str, digits: int = 1) -> str:
    if not isinstance(figure, dict) or figure.get("median") is None:
        return "n/a"
    if figure.get("runs", 0) <= 1:
        return _fmt(figure["median"], unit, digits)
    return (
        f"{_fmt(figure['median'], unit, digits)} (min {_fmt(figure['min'], '', digits)}, "
        f"max {_fmt(figure['max'], '', digits)}, {figure['runs']} runs)"
    )


def _distribution_text(d: dict[str, Any]) -> str:
    text = (
        f"p50 {_fmt(d.get('p50_ms'), '')} / p95 {_fmt(d.get('p95_ms'), '')} / "
        f"p99 {_fmt(d.get('p99_ms'), '')} ms"
    )
    return text + (" (<200 samples)" if d.get("small_sample") else "")


def _latency_spread_text(target: dict[str, Any], runs: int) -> str:
    """Each percentile's median over the runs with its min-max, e.g. ``p50 12.0 (11.2-14.1)``."""

    def one(name: str) -> str:
        figure = target.get(f"{name}_ms") or {}
        if figure.get("median") is None:
            return f"{name} n/a"
        return f"{name} {_fmt(figure['median'])} ({_fmt(figure['min'])}-{_fmt(figure['max'])})"

    text = f"{' / '.join(one(p) for p in ('p50', 'p95', 'p99'))} ms, {runs} runs"
    return text + (" (<200 samples)" if target.get("small_sample") else "")


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(what, figure, baseline/notes)`` rows of the terminal table and the docs."""
    summary = results.get("summary") or {}
    generator = summary.get("api_load_generator", "n/a")
    rows: list[tuple[str, str, str]] = [
        (
            "raw API transaction (PyMongo, c=32)",
            _spread_text(summary.get("raw_txn_per_s"), " txn/s"),
            "limit",
        ),
        (
            "order API by wrk (c=32)",
            _spread_text(summary.get("api_wrk_orders_per_s"), " orders/s"),
            "ratio uses this" if generator == "wrk" else "wrk not run",
        ),
        (
            "order API by httpx (c=32)",
            _spread_text(summary.get("api_httpx_orders_per_s"), " orders/s"),
            "ratio uses this" if generator == "httpx" else "for comparison",
        ),
        (
            "raw aiokafka producer",
            _spread_text(summary.get("raw_producer_msgs_per_s"), " msg/s"),
            "limit",
        ),
        (
            "raw MongoDB relay work (read + mark)",
            _spread_text(summary.get("raw_mongo_relay_events_per_s"), " ev/s"),
            "limit",
        ),
        (
            "relay drain of backlog",
            _spread_text(summary.get("relay_events_per_s"), " ev/s"),
            "this system",
        ),
        (
            "article relay (fixed-rate 500 ms, 50/round)",
            _spread_text(summary.get("article_relay_events_per_s"), " ev/s"),
            "article",
        ),
    ]
    for algorithm, cost in (get(results, "token_validation") or {}).items():
        rows.append(
            (
                f"bearer-token validation, {algorithm}, key cached",
                f"{_fmt(cost.get('cpu_us_per_call'), ' µs')} CPU/request",
                "the API figures above include it" if algorithm == "ES256" else "Keycloak's",
            )
        )
    latency = get(results, "relay_latency")
    if isinstance(latency, dict):
        rows.append(("relay commit->publish", _distribution_text(latency), ""))
    for name, items in (get(results, "consumer_runs") or {}).items():
        trips = spread(_figures(items, "redis_round_trips_per_msg"))
        rows.append(
            (
                f"{name} consumer drain",
                _spread_text(summary.get(f"{name}_consumer_msgs_per_s"), " msg/s"),
                f"redis trips/msg {_fmt(trips['median'], '', 2)}",
            )
        )
    for design in ("ours", "article", "ours_light", "article_light"):
        e2e = get(results, "e2e", design)
        if not isinstance(e2e, dict):
            continue
        spreads = get(summary, "e2e", design) or {}
        hits = e2e.get("in_flight_cap_hits")
        several = spreads.get("runs", 0) > 1
        load = (
            ("median run: " if several else "")
            + f"offered {_fmt(e2e.get('target_rate'), '/s')}, achieved "
            f"{_fmt(e2e.get('achieved_rate'), '/s')} ({e2e.get('created')} orders"
            + (f", in-flight cap hit {hits}x)" if hits else ")")
            + (f"; LOST over the runs: {lost}" if (lost := spreads.get("lost_orders")) else "")
        )
        for target in E2E_TARGETS:
            if e2e.get(target) is None and target == "verdict":
                continue  # a design whose order does not follow the verdict (the article's)
            d = e2e.get(target) or {}
            start = "201" if target.endswith("_from_201") else "scheduled send"
            label = target.removesuffix("_from_201")
            missing = d.get("missing")
            diagnosis = e2e.get(f"missing_{label}") or {}
            note = load + (
                f", {missing} missing ({diagnosis.get('late', 0)} late, "
                f"{diagnosis.get('lost', 0)} lost)"
                if missing
                else ""
            )
            shown = (
                _latency_spread_text(spreads[target], spreads["runs"])
                if several and target in spreads
                else _distribution_text(d)
            )
            rows.append((f"e2e {design}: {start} -> {label}", shown, note))
    for design in ("ours", "article"):
        ramp = get(results, "capacity", design)
        if isinstance(ramp, dict):
            steps = ", ".join(
                f"{s['offered_rate']:g}/s {'ok' if s['sustained'] else 'FAIL'}"
                for s in ramp.get("steps", [])
            )
            complete = ramp.get("completes_every_order_up_to_orders_per_s")
            spread_of_ramps = summary.get(f"capacity_{design}_orders_per_s") or {}
            runs = len(get(results, "capacity", "runs", design) or [])
            rows.append(
                (
                    f"capacity {design}",
                    _spread_text(spread_of_ramps, " orders/s")
                    + ("; steps of the median ramp" if runs > 1 else "")
                    if spread_of_ramps.get("median") is not None
                    else _fmt(ramp.get("capacity_orders_per_s"), " orders/s"),
                    f"{steps}; every order complete up to {_fmt(complete, '/s')}; "
                    f"{_fmt(ramp.get('share_of_bound'), 'x', 2)} of the MongoDB bound",
                )
            )
    for count, entry in (get(summary, "relays_scaling") or {}).items():
        items = get(results, "relays_scaling", "runs", count) or []
        done = [one for one in items if isinstance(one, dict)]
        last = done[-1] if done else {}
        speedup = entry.get("speedup_vs_one_relay")
        rows.append(
            (
                f"drain of {get(results, 'relays_scaling', 'backlog')} by {count} relay(s)",
                _spread_text(entry.get("steady_events_per_s"), " ev/s"),
                (f"x{_fmt(get(speedup, 'median'), '', 2)} of one relay; " if speedup else "")
                + f"shares {last.get('shares')}",
            )
        )
    for brokers, ramp in (get(results, "brokers") or {}).items():
        if isinstance(ramp, dict) and "steps" in ramp:
            rows.append(
                (
                    f"capacity ours, {brokers} Kafka broker(s)",
                    _fmt(ramp.get("capacity_orders_per_s"), " orders/s"),
                    ", ".join(
                        f"{s['offered_rate']:g}/s {'ok' if s['sustained'] else 'FAIL'}"
                        for s in ramp["steps"]
                    )
                    + f"; every order complete up to "
                    f"{_fmt(ramp.get('completes_every_order_up_to_orders_per_s'), '/s')}",
                )
            )
    for bound in get(results, "capacity", "bounds") or []:
        rows.append(
            (
                f"MongoDB bound {bound['design']}",
                _fmt(bound["bound_orders_per_s"], " orders/s"),
                bound["arithmetic"],
            )
        )
    rows += cpu_rows(summary)
    for name, peak in (get(results, "memory") or {}).items():
        rows.append((f"peak RSS {name}", _fmt(peak.get("peak_rss_mib"), " MiB"), ""))
    return rows


def _per_process_text(per_order_ms: Any) -> str:
    """``mongo 12.1, kafka 5.0, ...`` ms, the largest first."""
    if not isinstance(per_order_ms, dict):
        return ""
    ranked = sorted(
        ((n, v) for n, v in per_order_ms.items() if isinstance(v, int | float)),
        key=lambda item: -item[1],
    )
    return ", ".join(f"{n} {v:.1f}" for n, v in ranked) + " ms"


def cpu_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """CPU per completed order: each light run's spread, and each capacity step shown."""
    rows: list[tuple[str, str, str]] = []
    figures = summary.get("cpu_per_order") or {}
    for key, entry in figures.items():
        if isinstance(entry, dict):
            bound = get(entry, "bound_orders_per_s", "median")
            rows.append(
                (
                    f"CPU per order, e2e {key}",
                    _spread_text(entry.get("total_ms_per_order"), " ms")
                    + f" -> bound {_fmt(bound, ' orders/s')}",
                    _per_process_text(entry.get("per_order_ms")),
                )
            )
        elif isinstance(entry, list):
            for step in entry:
                rows.append(
                    (
                        f"CPU per order, {key} @ {_fmt(step.get('offered_rate'), '/s', 0)}",
                        f"{_fmt(step.get('total_ms_per_order'), ' ms', 2)} -> bound "
                        f"{_fmt(step.get('bound_orders_per_s'), ' orders/s')}",
                        _per_process_text(step.get("per_order_ms")),
                    )
                )
    return rows


def render_table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) if rows else 0 for i in range(3)]
    lines = [
        f"| {'measure':<{widths[0]}} | {'figure':<{widths[1]}} | {'notes':<{widths[2]}} |",
        f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|{'-' * (widths[2] + 2)}|",
    ]
    lines += [f"| {a:<{widths[0]}} | {b:<{widths[1]}} | {c:<{widths[2]}} |" for a, b, c in rows]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """The whole terminal report: table, ratios, goals, errors of phases that failed."""
    summary = results.get("summary") or {}
    out = [render_table(table_rows(results)), "", "Ratios (per run, then the median):"]
    for name, figure in summary.items():
        ratios = ("api_vs", "relay_vs", "consumers_vs", "article_vs", "capacity_vs")
        if name.startswith(ratios) and isinstance(figure, dict):
            out.append(f"  {name:<38} {_spread_text(figure, 'x', 3)}")
    for bound in get(results, "capacity", "bounds") or []:
        out.append(f"  bound {bound['design']}: {bound['counted']}")
    out += ["", "Goals:"]
    for goal in results["goals"]:
        status = {True: "MET", False: "NOT MET", None: "not measured"}[goal["met"]]
        value = _fmt(goal["value"], goal.get("unit", ""), 2)
        note = f"  ({goal['note']})" if goal.get("note") else ""
        out.append(f"  [{status:^12}] {goal['goal']:<40} {value}{note}")
    failures = results.get("failures") or []
    if failures:
        out += ["", "What failed (its figures are missing, not guessed):"]
        out += [f"  {failure_text(f)}" for f in failures if isinstance(f, dict)]
    without = phases_without_figure(results)
    if without:
        out += ["", f"Phases that produced no figure: {', '.join(without)}"]
    return "\n".join(out)


def failure_text(failure: dict[str, Any]) -> str:
    """``relay: run 2, relay drain: TimeoutError: ...``."""
    where = [f"run {failure['run'] + 1}"] if isinstance(failure.get("run"), int) else []
    where += [failure["step"]] if failure.get("step") else []
    return f"{failure.get('phase')}: " + "".join(f"{w}, " for w in where) + str(failure["error"])


def _measured(value: Any) -> bool:
    if isinstance(value, int | float):
        return not math.isnan(value)
    return bool(value)


def _any_median(summary: Any, *keys: str) -> bool:
    return any(_measured(get(summary, key, "median")) for key in keys)


# What counts as a figure of each phase: at least one of these was measured.
PHASE_FIGURES: Final[dict[str, Callable[[dict[str, Any]], bool]]] = {
    "order_api": lambda r: _any_median(
        r.get("summary"), "raw_txn_per_s", "api_wrk_orders_per_s", "api_httpx_orders_per_s"
    ),
    "relay": lambda r: (
        _any_median(
            r.get("summary"),
            "raw_producer_msgs_per_s",
            "raw_mongo_relay_events_per_s",
            "relay_events_per_s",
            "article_relay_events_per_s",
        )
        or _measured(get(r, "relay_latency", "p50_ms"))
    ),
    # Debezium's own figure: a relay drain alone beside it compares nothing.
    "debezium": lambda r: (
        _any_median(get(r, "debezium", "summary"), "debezium_events_per_s")
        or _measured(get(r, "debezium", "summary", "debezium_commit_to_publish_ms", "p50"))
    ),
    "consumers": lambda r: any(
        _measured(f)
        for items in (get(r, "consumer_runs") or {}).values()
        for f in _figures(items, "msgs_per_s")
    ),
    "e2e_ours": lambda r: bool(get(r, "e2e", "ours") or get(r, "e2e", "ours_light")),
    "e2e_article": lambda r: bool(get(r, "e2e", "article") or get(r, "e2e", "article_light")),
    "capacity": lambda r: any(
        _measured(get(r, "capacity", design, "steps")) for design in ("ours", "article")
    ),
    "tracing_off": lambda r: _measured(get(r, "tracing_off", "hooks_ns")),
    "breakdown": lambda r: _measured(get(r, "breakdown", "orders")),
    "relays_scaling": lambda r: any(
        _measured(get(entry, "steady_events_per_s", "median"))
        for entry in (get(r, "summary", "relays_scaling") or {}).values()
    ),
    "brokers": lambda r: any(
        isinstance(ramp, dict) and _measured(ramp.get("steps"))
        for ramp in (get(r, "brokers") or {}).values()
    ),
}


def phases_without_figure(results: dict[str, Any]) -> list[str]:
    """The phases of the run that produced no figure at all (``make bench`` fails on them).

    A phase with some failed runs but a figure from another is not among them: its failures
    are recorded and its figure stands on the runs that worked. A phase this module has no
    rule for counts as without figure when it failed as a whole.
    """
    failed_whole = {
        f.get("phase")
        for f in results.get("failures") or []
        if isinstance(f, dict) and f.get("run") is None and f.get("step") is None
    }
    without = []
    for name in results.get("phases") or []:
        produced = PHASE_FIGURES.get(name)
        if (produced is None and name in failed_whole) or (produced and not produced(results)):
            without.append(name)
    return without


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None if math.isnan(value) else "inf"
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _report_failure(results: dict[str, Any], step: str, exc: Exception) -> None:
    failure = {
        "phase": "report",
        "run": None,
        "step": step,
        "error": f"{type(exc).__name__}: {exc}",
    }
    results.setdefault("failures", []).append(failure)


def finish(results: dict[str, Any], json_path: Path) -> str:
    """Add ratios and goals to ``results``, write the JSON file, return the terminal report.

    Always writes the file: a summary, goal or table that cannot be computed from what the
    phases left is recorded as a failure of the report (the raw figures are all there)."""
    try:
        results["summary"] = summarize(results)
    except Exception as exc:
        _report_failure(results, "summary", exc)
        results["summary"] = {}
    try:
        results["goals"] = evaluate_goals(results)
    except Exception as exc:
        _report_failure(results, "goals", exc)
        results["goals"] = []
    try:
        text = render(results)
    except Exception as exc:
        _report_failure(results, "table", exc)
        text = "\n".join(["(report table failed)"] + [failure_text(f) for f in results["failures"]])
    json_path.write_text(json.dumps(_json_safe(results), indent=2, default=str) + "\n")
    return text
