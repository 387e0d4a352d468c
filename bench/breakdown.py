"""Where an order's time goes at light load, from the API's commit to the reservation's commit.

``python -m bench --only breakdown``: our pipeline at 5 orders/s (the light-load goal of issue 13)
with, per order, every timestamp the stack exposes from outside, all on this machine's wall clock:

* ``api_commit``: ``wallTime`` of the outbox insert (change stream on ``outbox``), the commit of
  the order's transaction (millisecond resolution);
* ``answered``: the 201 at the load generator;
* ``relay_send``: the Kafka record's CreateTime, taken by the relay's producer at ``send``;
* ``kafka_visible``: when a ``read_committed`` reader (fetch wait 50 ms) first got the record:
  after the relay's Kafka transaction committed and its markers were written;
* ``published_mark``: the outbox ``publishedAt`` the relay writes after the Kafka commit;
* ``handler_start``: the reservation's ``createdAt`` (the inventory handler, after the Redis claim);
* ``reserved``: ``wallTime`` of the reservation insert (change stream), its transaction's commit.

Each stage is the difference of two of them, reported as a distribution. A stage that ends at
another observer's timestamp (``kafka_visible``) carries that observer's own delay; one clock
read per side, millisecond resolution on the MongoDB and Kafka sides.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

import httpx

from bench import e2e_phase, pipelines
from bench.e2e_latency import InsertWatcher, OrderTimes
from bench.run import Run
from bench.stats import Distribution
from services.inventory.models import RESERVATIONS
from shared.mongo import make_mongo_client
from shared.outbox import OUTBOX_COLLECTION, OutboxField

# (name, from, to): the stages of the breakdown, in the order an order passes them.
STAGES: Final = (
    ("commit_to_201", "api_commit", "answered"),
    ("commit_to_relay_send", "api_commit", "relay_send"),
    ("relay_send_to_kafka_visible", "relay_send", "kafka_visible"),
    ("relay_send_to_published_mark", "relay_send", "published_mark"),
    ("kafka_visible_to_handler_start", "kafka_visible", "handler_start"),
    ("relay_send_to_handler_start", "relay_send", "handler_start"),
    ("handler_start_to_reserved", "handler_start", "reserved"),
    ("commit_to_reserved", "api_commit", "reserved"),
    ("answered_to_reserved", "answered", "reserved"),
)
# The relay's and the inventory service's counters read after the run (Prometheus text).
_METRICS: Final = {
    "relay": re.compile(r"^relay_wakeups_total\{.*\}"),
    "inventory": re.compile(r"^consumer_processing_seconds_(sum|count)\{"),
}


def stage_distributions(timelines: dict[str, dict[str, float]]) -> dict[str, Distribution]:
    """Per stage, the distribution (ms) over the orders that have both its timestamps.

    Orders missing a timestamp are left out of that stage (not counted as infinitely late: this
    is a breakdown, the end-to-end figure with its missing orders is the e2e phase's).
    """
    out: dict[str, Distribution] = {}
    for name, start, end in STAGES:
        values = [
            (times[end] - times[start]) * 1000
            for times in timelines.values()
            if start in times and end in times
        ]
        out[name] = Distribution.of(values, 0)
    return out


def timelines_of(
    times: OrderTimes,
    api_commits: dict[str, float],
    outbox_docs: list[dict[str, Any]],
    reservation_docs: list[dict[str, Any]],
) -> dict[str, dict[str, float]]:
    """Order id -> {timestamp name -> wall seconds}, for the orders answered with a 201."""
    published = {
        d[OutboxField.AGGREGATE_ID]: d[OutboxField.PUBLISHED_AT]
        for d in outbox_docs
        if isinstance(d.get(OutboxField.PUBLISHED_AT), datetime)
    }
    started = {
        d["orderId"]: d["createdAt"]
        for d in reservation_docs
        if isinstance(d.get("createdAt"), datetime)
    }
    columns: dict[str, dict[str, float]] = {
        "api_commit": api_commits,
        "answered": times.answered,
        "relay_send": times.kafka_created,
        "kafka_visible": times.kafka_visible,
        "published_mark": {o: t.timestamp() for o, t in published.items()},
        "handler_start": {o: t.timestamp() for o, t in started.items()},
        "reserved": times.reserved,
    }
    return {
        order: {name: column[order] for name, column in columns.items() if order in column}
        for order in times.answered
    }


@dataclass
class Breakdown:
    rate: float
    orders: int
    stages: dict[str, Distribution]
    metrics: dict[str, list[str]]


async def _scrape(port: int, pattern: re.Pattern[str]) -> list[str]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return [line for line in text.splitlines() if pattern.match(line)]


async def run_phase(run: Run) -> None:
    cfg = run.config
    async with pipelines.ours(run, f"bd_{run.run_id}") as pipeline:
        await e2e_phase.warm_up(run, pipeline)
        outbox_watch = InsertWatcher(
            cfg.mongo_uri, pipeline.orders_database, OUTBOX_COLLECTION, OutboxField.AGGREGATE_ID
        )
        await outbox_watch.start()
        times = OrderTimes()
        try:
            result = await e2e_phase.measure(
                run,
                pipeline,
                e2e_phase.LIGHT_RATE,
                run.plan.light_seconds,
                run.plan.settle_seconds,
                times=times,
            )
        finally:
            await outbox_watch.close()
        client = make_mongo_client(cfg.mongo_uri, 10.0, "bench-breakdown")
        try:
            ids = list(times.answered)
            f = OutboxField
            outbox_docs = await (
                client[pipeline.orders_database][OUTBOX_COLLECTION]
                .find({f.AGGREGATE_ID: {"$in": ids}}, {f.AGGREGATE_ID: 1, f.PUBLISHED_AT: 1})
                .to_list(None)
            )
            reservation_docs = await (
                client[pipeline.inventory_database][RESERVATIONS]
                .find({"orderId": {"$in": ids}}, {"orderId": 1, "createdAt": 1})
                .to_list(None)
            )
        finally:
            await client.close()
        metrics = {
            name: await _scrape(cfg.port_of(name), pattern) for name, pattern in _METRICS.items()
        }
    timelines = timelines_of(times, outbox_watch.committed, outbox_docs, reservation_docs)
    breakdown = Breakdown(
        rate=e2e_phase.LIGHT_RATE,
        orders=len(timelines),
        stages=stage_distributions(timelines),
        metrics=metrics,
    )
    run.results["breakdown"] = {**asdict(breakdown), "e2e": asdict(result)}
    print(f"breakdown at {breakdown.rate}/s, {breakdown.orders} orders (ms: p50 / p95 / p99):")
    for name, dist in breakdown.stages.items():
        print(f"  {name:34s} {dist.p50_ms:8.1f} {dist.p95_ms:8.1f} {dist.p99_ms:8.1f}")
    for name, lines in metrics.items():
        for line in lines:
            print(f"  {name}: {line}")
