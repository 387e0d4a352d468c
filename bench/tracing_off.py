"""Tracing-off phase: what the tracing hooks cost when no collector is configured.

Without ``OTEL_EXPORTER_OTLP_ENDPOINT`` the OpenTelemetry SDK is never imported and every span
helper of ``shared/tracing.py`` returns a shared no-op at once. Two measurements in one phase:

1. **hooks**: each hook the services call on their hot paths, timed over many calls against an
   empty call of the same shape (the loop and call overhead, subtracted): per event the relay
   publishes (``event_span`` + ``end_span``), per relay batch (``batch_span``), per record a
   consumer handles (``record_span`` with one ``step_span`` inside) and per order the API writes
   (``current_traceparent``). Median of repeats, with min and max.
2. **the relay's per-event time**: our relay, in-process, draining a backlog (tracing off, as in
   ``bench/relay_drain.py``), repeated: its median says what one event costs, its run-to-run
   spread how large a difference this machine could resolve at all.

Verdict: the relay hooks' share of the per-event time, against that spread (never below
:data:`RESOLUTION`). A share below it is a cost no end-to-end measurement here could see.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from opentelemetry.trace import INVALID_SPAN

from bench.relay_drain import (
    BENCH_TOPIC,
    _published_counter,
    drain,
    relay_settings,
    seed_backlog,
)
from bench.run import Run
from bench.stats import spread
from services.relay.main import Relay
from shared.kafka import ensure_topics
from shared.mongo import make_mongo_client
from shared.settings import InfraSettings
from shared.tracing import (
    batch_span,
    current_traceparent,
    end_span,
    event_span,
    record_span,
    step_span,
)
from stack.observe import wait_for_topics

# The smallest relative throughput difference this bench would call a difference at all, even
# when two runs happen to agree more closely than that.
RESOLUTION: Final = 0.01
# Calls per timing and timings per hook: about 0.1 s per timing at a microsecond a call.
CALLS: Final = 100_000
HOOK_REPEATS: Final = 5
TRACEPARENT: Final = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
HEADERS: Final = [("traceparent", TRACEPARENT.encode())]


def _relay_event() -> None:
    end_span(event_span(TRACEPARENT, BENCH_TOPIC, "event-id", INVALID_SPAN), None)


def _relay_batch() -> None:
    with batch_span(500):
        pass


def _consumer_record() -> None:
    with record_span("inventory", HEADERS, BENCH_TOPIC, 0, 0), step_span("step"):
        pass


def _order_traceparent() -> None:
    current_traceparent()


def _nothing() -> None:
    return None


HOOKS: Final[dict[str, Callable[[], None]]] = {
    "relay_per_event": _relay_event,
    "relay_per_batch": _relay_batch,
    "consumer_per_record": _consumer_record,
    "order_per_order": _order_traceparent,
}


def _timed(body: Callable[[], None], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        body()
    return time.perf_counter() - started


def net_ns_per_call(hook_seconds: float, empty_seconds: float, calls: int) -> float:
    """Nanoseconds per call above an empty call of the same loop (never below zero: a hook
    cannot cost less than nothing; a negative difference is timer noise)."""
    if calls <= 0:
        raise ValueError(f"calls must be positive, got {calls}")
    return max(0.0, (hook_seconds - empty_seconds) / calls * 1e9)


def time_hooks(calls: int = CALLS, repeats: int = HOOK_REPEATS) -> dict[str, dict[str, Any]]:
    """Net nanoseconds per call of every hook: spread (median, min, max) over ``repeats``."""
    figures: dict[str, list[float | None]] = {name: [] for name in HOOKS}
    for _ in range(repeats):
        for name, hook in HOOKS.items():
            # The empty loop is timed right next to each hook: the machine's load drifts.
            empty = _timed(_nothing, calls)
            figures[name].append(round(net_ns_per_call(_timed(hook, calls), empty, calls), 1))
    return {name: {**spread(values), "calls": calls} for name, values in figures.items()}


def verdict(hook_ns_per_event: float, drain_events_per_s: Sequence[float]) -> dict[str, Any]:
    """The hooks' share of the relay's per-event time against what the drain can resolve.

    ``drain_events_per_s`` are repeated drain rates (at least two: one run has no spread).
    Measurable only when the share reaches the drain's relative run-to-run spread (max - min
    over the median) or :data:`RESOLUTION`, whichever is larger.
    """
    rates = [r for r in drain_events_per_s if r > 0]
    if len(rates) < 2:
        raise ValueError("the verdict needs at least two drain runs with a rate")
    median_rate = statistics.median(rates)
    per_event_ns = 1e9 / median_rate
    share = hook_ns_per_event / per_event_ns
    noise = max((max(rates) - min(rates)) / median_rate, RESOLUTION)
    measurable = share >= noise
    text = (
        f"tracing off costs {share:.4%} of the relay's per-event time "
        f"({hook_ns_per_event:.0f} ns of {per_event_ns / 1000:.0f} µs); the drain itself varies "
        f"by {noise:.1%} run to run: "
        + ("MEASURABLE" if measurable else "not measurable (below the drain's own noise)")
    )
    return {
        "relay_per_event_us": round(per_event_ns / 1000, 1),
        "hooks_share": round(share, 6),
        "drain_noise": round(noise, 4),
        "measurable": measurable,
        "text": text,
    }


async def run_phase(run: Run) -> None:
    """Time the hooks, drain a backlog with the relay (tracing off) a few times, judge."""
    cfg = run.config
    plan = run.plan
    results: dict[str, Any] = {
        # The claim under test: with no endpoint the SDK is not even imported.
        "sdk_imported": "opentelemetry.sdk.trace" in sys.modules,
        "hooks_ns": time_hooks(),
    }
    run.results["tracing_off"] = results
    infra = InfraSettings(mongo_uri=cfg.mongo_uri, kafka_bootstrap_servers=cfg.kafka_bootstrap)
    await ensure_topics(cfg.kafka_bootstrap, [BENCH_TOPIC], replication=cfg.kafka_replication)
    await wait_for_topics(cfg.kafka_bootstrap, [BENCH_TOPIC], 60)
    # A quarter of the relay phase's backlog is enough for a per-event figure; at least two runs,
    # or there is no spread to judge against.
    backlog = max(500, plan.backlog // 4)
    client = make_mongo_client(cfg.mongo_uri, 30.0, "bench-tracing-off")
    drains: list[dict[str, Any] | None] = []
    results["relay_drain"] = drains

    async def one_drain(database: str) -> dict[str, Any]:
        await seed_backlog(client, database, backlog, "ours")
        relay = Relay(relay_settings(infra, database), client)
        return await drain(
            client,
            database,
            backlog,
            plan.relay_timeout_seconds,
            relay.run,
            _published_counter(relay),
        )

    try:
        for attempt in range(max(2, plan.repeats)):
            database = f"bench_tracing_off_{run.run_id}_{attempt}"
            drains.append(await run.attempt("relay drain", attempt, one_drain(database)))
            await run.drop_database(database)
    finally:
        await client.close()
    rates = [d["events_per_s"] for d in drains if d is not None]
    results["relay_events_per_s"] = spread(rates)
    hooks = results["hooks_ns"]
    # The batch's span is paid once per batch of RELAY_BATCH_SIZE events.
    per_event = hooks["relay_per_event"]["median"] + hooks["relay_per_batch"]["median"] / (
        relay_settings(infra, "unused").batch_size
    )
    results["verdict"] = verdict(per_event, rates)
    shown = ", ".join(f"{name} {figures['median']} ns" for name, figures in hooks.items())
    print(f"tracing off: hooks {shown}", flush=True)
    print(f"tracing off: {results['verdict']['text']}", flush=True)
