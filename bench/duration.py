"""How long a bench run takes, from its plan: printed at the start of every run, and held under
:data:`FULL_RUN_LIMIT_SECONDS` for the default full plan by a unit test (issue 21).

Pure arithmetic. Each phase is the sum of its windows and its fixed costs:

* a **fixed window** (a load step, a light run, a throughput run, an insert schedule) counts at
  its planned length;
* a **drain** counts at its backlog over the rate this machine drained it with nothing else
  running (docs/benchmarks.md), never longer than the plan's bound on it: on a loaded machine
  the drains run longer, up to their bounds, and so does the run;
* an end-to-end measurement at 50% of the API's maximum overloads the pipeline (p50 of 24 s in
  the quiet runs), so its settle wait counts in full; a step or light run that is sustained
  settles within :data:`SETTLE_TAIL_SECONDS`; each capacity ramp counts every step of the plan
  (the most it can run), plus one step that fails and waits out its settle and grace;
* the fixed costs (stack, process and Kafka Connect start-ups, seeding, drops) are the ones
  measured here, on the loaded machine (docs/bench-runs/quick-injected-failures.json): a quick
  run's phases less their windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Final

from bench.run import Plan

# The bound on `make bench` (every phase of the default plan, goals evaluated).
FULL_RUN_LIMIT_SECONDS: Final = 40 * 60.0

# -- fixed costs, seconds ------------------------------------------------------------------------
# The embedded stack's infrastructure up, the bench's topics created; and down at the end. The
# quick run spent 19.6 s outside its phases, both included.
STACK_UP_SECONDS: Final = 25.0
STACK_DOWN_SECONDS: Final = 10.0
# One stack service or bench process started until ready, and stopped: a pipeline of four took
# about 50 s of the quick run's end-to-end phases outside their windows.
PROCESS_SECONDS: Final = 12.0
# Kafka Connect's JVM, its plugin scan and the connector RUNNING (29.6-51.8 s measured), then
# the first event through it.
CONNECT_START_SECONDS: Final = 50.0
# Opening and closing one end-to-end measurement's observers (change stream, Kafka reader).
E2E_SETUP_SECONDS: Final = 3.0
# Until the last order of a sustained step has its reservation and email.
SETTLE_TAIL_SECONDS: Final = 5.0
# After the settle window, how long a missing order may still arrive (bench/e2e_latency.py).
GRACE_SECONDS: Final = 15.0
# bench/e2e_phase.py: the warm-up's settle bound.
WARMUP_SETTLE_SECONDS: Final = 10.0
# Inserting outbox events (20,000 in 7.3 s on a quiet machine), dropping their database.
SEED_SECONDS_PER_EVENT: Final = 0.75e-3
DROP_SECONDS_PER_EVENT: Final = 0.5e-3
# One throughput run's set-up besides its window: indexes, connections, the httpx warm-up.
THROUGHPUT_SETUP_SECONDS: Final = 5.0
# A consumer run's topic, backlog and group join; a drain's poll and stop.
CONSUMER_SETUP_SECONDS: Final = 10.0
DRAIN_STOP_SECONDS: Final = 2.0
# tracing_off's hook timings: 4 hooks x 5 repeats x 2 loops of 100,000 calls.
HOOK_TIMING_SECONDS: Final = 5.0

# -- drain rates with nothing else running, per second (docs/benchmarks.md) ------------------------
RELAY_EVENTS_PER_S: Final = 440.0
RAW_MONGO_EVENTS_PER_S: Final = 375.0
RAW_PRODUCER_MSGS_PER_S: Final = 20_000.0
# The article's relay is capped at 100/s by design (50 events per 500 ms round).
ARTICLE_RELAY_EVENTS_PER_S: Final = 100.0
# Debezium: from the resume to its first record (the task's restart, its change stream
# resuming behind the backlog: 2.7-3.8 s behind 2,000 events, 12-15 s behind 20,000, loaded),
# then the change stream's rate (1,700-3,900 events/s once it flows).
DEBEZIUM_RESUME_SECONDS: Final = 3.0
DEBEZIUM_RESUME_SECONDS_PER_EVENT: Final = 0.5e-3
DEBEZIUM_EVENTS_PER_S: Final = 2_500.0
CONSUMER_MSGS_PER_S: Final = {"inventory": 108.0, "email": 113.0, "article": 64.0}
# Where a ramp is counted to stop: the capacity goal is met and the next step fails (a
# ramp stops at its first unsustained step; one sustaining every step runs longer, shown apart).
CAPACITY_GOAL_ORDERS_PER_S: Final = 40.0
# bench/relay_drain.py and bench/debezium.py: one event every 50 ms at latency.
LATENCY_INSERT_SECONDS: Final = 0.05
# bench/relay_drain.py and bench/debezium.py: events of the relay latency run left to settle.
LATENCY_SETTLE_SECONDS: Final = 5.0


def _seed(events: float) -> float:
    return events * SEED_SECONDS_PER_EVENT


def _drop(events: float) -> float:
    return events * DROP_SECONDS_PER_EVENT


def _drain(events: float, rate: float, bound: float) -> float:
    return min(bound, events / rate) + DRAIN_STOP_SECONDS


def _e2e_window(seconds: float, settle: float) -> float:
    return seconds + E2E_SETUP_SECONDS + settle


def _warm_up(plan: Plan) -> float:
    return _e2e_window(plan.e2e_warmup_seconds, SETTLE_TAIL_SECONDS)


def order_api(plan: Plan) -> float:
    # Raw transaction, wrk, httpx: one window each per run.
    per_run = 3 * plan.throughput_seconds + THROUGHPUT_SETUP_SECONDS
    return PROCESS_SECONDS + plan.repeats * per_run


def _relay_latency(plan: Plan) -> float:
    return plan.latency_events * LATENCY_INSERT_SECONDS + LATENCY_SETTLE_SECONDS


def relay(plan: Plan) -> float:
    backlog, article = plan.backlog, plan.article_backlog
    per_run = (
        backlog / RAW_PRODUCER_MSGS_PER_S
        + _seed(backlog)
        + _drain(backlog, RAW_MONGO_EVENTS_PER_S, plan.relay_timeout_seconds)
        + _drop(backlog)
        + _seed(backlog)
        + _drain(backlog, RELAY_EVENTS_PER_S, plan.relay_timeout_seconds)
        + _drop(backlog)
        + _seed(article)
        + _drain(article, ARTICLE_RELAY_EVENTS_PER_S, plan.article_timeout_seconds)
        + _drop(article)
    )
    return plan.repeats * per_run + _relay_latency(plan)


def debezium(plan: Plan) -> float:
    backlog = plan.backlog
    debezium_drain = min(
        plan.relay_timeout_seconds,
        DEBEZIUM_RESUME_SECONDS
        + backlog * DEBEZIUM_RESUME_SECONDS_PER_EVENT
        + backlog / DEBEZIUM_EVENTS_PER_S,
    )
    per_run = (
        _seed(backlog)
        + _drain(backlog, RELAY_EVENTS_PER_S, plan.relay_timeout_seconds)
        + _seed(backlog)
        + debezium_drain
        + DRAIN_STOP_SECONDS
    )
    # Our relay's latency, Debezium's with its defaults and with a 10 ms poll.
    latency = 3 * _relay_latency(plan)
    # Every drained backlog is dropped at the end: ours one database per run, Debezium's one.
    drops = _drop(2 * plan.repeats * backlog)
    return CONNECT_START_SECONDS + plan.repeats * per_run + latency + drops


def consumers(plan: Plan) -> float:
    drains = sum(
        min(plan.consumer_timeout_seconds, plan.consumer_backlog / rate) + DRAIN_STOP_SECONDS
        for rate in CONSUMER_MSGS_PER_S.values()
    )
    return plan.repeats * (CONSUMER_SETUP_SECONDS + drains)


def _e2e(plan: Plan, design: str, processes: int) -> float:
    loaded_runs, light_runs = plan.e2e_runs(design)
    # At 50% of the API's maximum the pipeline falls behind: its settle wait runs out.
    loaded = _e2e_window(plan.e2e_seconds, plan.settle_seconds)
    light = _e2e_window(plan.light_seconds, SETTLE_TAIL_SECONDS)
    return processes * PROCESS_SECONDS + _warm_up(plan) + loaded_runs * loaded + light_runs * light


def e2e_ours(plan: Plan) -> float:
    return _e2e(plan, "ours", processes=4)


def e2e_article(plan: Plan) -> float:
    # Our order API, the article's relay and its consumer.
    return _e2e(plan, "article", processes=3)


def ramp_steps(plan: Plan, through: float = CAPACITY_GOAL_ORDERS_PER_S) -> int:
    """Steps of one ramp that sustains every rate up to ``through`` and fails the next (or
    the last step, when no rate of the plan is above ``through``)."""
    return min(len(plan.capacity_rates), sum(r <= through for r in plan.capacity_rates) + 1)


def ramp(plan: Plan, processes: int, through: float = CAPACITY_GOAL_ORDERS_PER_S) -> float:
    """One design's ramp on a fresh pipeline of ``processes``: sustained up to ``through``
    orders/s, then one step that fails and waits out its settle window and grace period."""
    step = _e2e_window(plan.capacity_step_seconds, SETTLE_TAIL_SECONDS)
    failing = plan.settle_seconds + GRACE_SECONDS
    steps = ramp_steps(plan, through)
    return processes * PROCESS_SECONDS + _warm_up(plan) + steps * step + failing


def capacity(
    plan: Plan, *, raw_measured_here: bool = False, through: float = CAPACITY_GOAL_ORDERS_PER_S
) -> float:
    ours, article = ramp(plan, 4, through), ramp(plan, 3, through)
    ramps = plan.capacity_repeats * ours + plan.article_capacity_repeats * article
    raw = plan.throughput_seconds + THROUGHPUT_SETUP_SECONDS if raw_measured_here else 0.0
    return ramps + raw


def tracing_off(plan: Plan) -> float:
    backlog = max(500, plan.backlog // 4)
    one = (
        _seed(backlog)
        + _drain(backlog, RELAY_EVENTS_PER_S, plan.relay_timeout_seconds)
        + _drop(backlog)
    )
    return HOOK_TIMING_SECONDS + max(2, plan.repeats) * one


def breakdown(plan: Plan) -> float:
    light = _e2e_window(plan.light_seconds, SETTLE_TAIL_SECONDS)
    return 4 * PROCESS_SECONDS + _warm_up(plan) + light


def relays_scaling(plan: Plan) -> float:
    backlog = plan.scaling_backlog
    per_count = [
        _seed(backlog)
        + relays * PROCESS_SECONDS
        + _drain(backlog, RELAY_EVENTS_PER_S, plan.scaling_timeout_seconds)
        + _drop(backlog)
        for relays in plan.relay_counts
    ]
    return plan.repeats * sum(per_count)


def brokers(plan: Plan, through: float = CAPACITY_GOAL_ORDERS_PER_S) -> float:
    # A stack of its own per broker count (each broker one more JVM to start), and our ramp.
    return sum(
        STACK_UP_SECONDS * count + STACK_DOWN_SECONDS + ramp(plan, 4, through)
        for count in plan.broker_counts
    )


def estimate(
    plan: Plan, phases: Iterable[str], *, ramp_through: float = CAPACITY_GOAL_ORDERS_PER_S
) -> dict[str, float]:
    """Seconds per phase of ``phases`` (in the order given), with ``stack`` for the stack's
    start and stop, rounded to the second; each capacity ramp counted as sustaining every
    rate up to ``ramp_through`` and failing the next (``math.inf``: every step of the plan)."""
    chosen = list(phases)
    costs: dict[str, Callable[[Plan], float]] = {
        "order_api": order_api,
        "relay": relay,
        "debezium": debezium,
        "consumers": consumers,
        "e2e_ours": e2e_ours,
        "e2e_article": e2e_article,
        "capacity": lambda p: capacity(
            p, raw_measured_here="order_api" not in chosen, through=ramp_through
        ),
        "tracing_off": tracing_off,
        "breakdown": breakdown,
        "relays_scaling": relays_scaling,
        "brokers": lambda p: brokers(p, ramp_through),
    }
    unknown = [name for name in chosen if name not in costs]
    if unknown:
        raise ValueError(f"no duration model for phase(s) {', '.join(unknown)}")
    seconds = {"stack": STACK_UP_SECONDS + STACK_DOWN_SECONDS}
    seconds.update({name: costs[name](plan) for name in chosen})
    return {name: float(round(value)) for name, value in seconds.items()}


def describe(plan: Plan, phases: Iterable[str]) -> str:
    """What a run of ``phases`` is estimated to take, for its first lines: the total, each
    phase's share, and the total if every capacity ramp sustained every step."""
    chosen = list(phases)
    seconds = estimate(plan, chosen)
    total = sum(seconds.values())
    longest = sum(estimate(plan, chosen, ramp_through=math.inf).values())
    parts = ", ".join(f"{name} {value / 60:.1f}" for name, value in seconds.items())
    text = (
        f"estimated duration: {math.ceil(total / 60)} min on an otherwise idle machine "
        f"(minutes: {parts})"
    )
    if longest > total:
        text += (
            f"; {math.ceil(longest / 60)} min if every ramp sustained every step up to "
            f"{plan.capacity_rates[-1]:g}/s"
        )
    return text + ". Under load the drains run up to their bounds and the run takes longer."
