"""Relay scaling phase (issue 14): one backlog drained by 1, 2 and 4 relay processes sharing
the outbox's slots.

For each process count N of ``plan.relay_counts``, ``plan.repeats`` times (the counts
interleaved, so run i of each count was measured minutes apart under the same machine load):

1. a fresh database: the outbox indexes, then ``plan.scaling_backlog`` Pending events (the
   relay phase's records, on its bench topic), seeded with no relay running;
2. N relay processes started together through the stack's launcher (``relay-scale-1`` ...),
   each with ``RELAY_SLOTS=plan.relay_slots`` and the same database and transactional id, as
   N replicas of one deployment would run;
3. the drain ends when no event is Pending (counted once a second: the count costs the server
   being measured, and the rate does not depend on it);
4. the rates come from the events' own ``publishedAt`` stamps, written by the relays at each
   mark (:func:`bench.scaling_model.drain_rates`): the steady rate between the 10% and 90%
   stamps (the figure compared), the rate from the first publish to the last, and the rate
   from the start command (start-up included);
5. each relay's ``/metrics`` says how many events it published and how many slots it owns at
   the end (``relay_owned_slots``, once sharded leadership exports it): whether the processes
   really shared the work.

The relays start on a seeded backlog, so the hand-out of the slots (each joining relay gets
its share after the holder's round in flight) happens during the drain: the steady window
leaves the first 10% out, and each relay's ``owned_slots`` at the end says whether the share
settled. On a small backlog (``--quick``: 2,000 events, about one batch per slot) the drain is a
round or two and the figure is mostly start-up and hand-out: only the full 20,000 says more.

Two cores cannot show N relays going N times faster: the relays, the MongoDB server and Kafka
share them (see docs/benchmarks.md, "Scaling"). What this phase shows is the shape: whether
the work is shared, and what sharing costs or gains on the same machine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any, Final

import httpx

from bench import relay_drain
from bench.run import Run
from bench.scaling_model import drain_rates, metric_value, shares
from shared.contracts import OutboxStatus
from shared.kafka import ensure_topics
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION, OutboxField
from stack.observe import wait_for_topics

# Poll interval of the drain check: one count of Pending events on the server being measured.
DRAIN_POLL_SECONDS: Final = 1.0
SCRAPE_TIMEOUT_SECONDS: Final = 10.0


def instance_names(count: int) -> list[str]:
    """The stack instances of one drain (extra instances: their own ports and logs)."""
    return [f"relay-scale-{n}" for n in range(1, count + 1)]


async def _scrape(port: int) -> dict[str, float | None]:
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_SECONDS) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return {
        "published": metric_value(text, "relay_published_total"),
        "owned_slots": metric_value(text, "relay_owned_slots"),
    }


async def _publish_marks(client: MongoClient, database: str) -> list[tuple[float, int]]:
    """``(publishedAt, events)`` per mark: one group per stamp, not one document per event."""
    f = OutboxField
    pipeline: list[dict[str, Any]] = [
        {"$match": {f.STATUS: OutboxStatus.PUBLISHED.value}},
        {"$group": {"_id": f"${f.PUBLISHED_AT}", "events": {"$sum": 1}}},
    ]
    cursor = await client[database][OUTBOX_COLLECTION].aggregate(pipeline)
    return [
        (group["_id"].timestamp(), int(group["events"]))
        async for group in cursor
        if group["_id"] is not None
    ]


async def _wait_drained(run: Run, client: MongoClient, database: str, names: list[str]) -> bool:
    """Until no event is Pending (True) or ``plan.scaling_timeout_seconds`` passed (False);
    raises if a relay process died meanwhile."""
    outbox = client[database][OUTBOX_COLLECTION]
    deadline = time.monotonic() + run.plan.scaling_timeout_seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(DRAIN_POLL_SECONDS)  # poll interval, bounded by the deadline
        dead = [name for name in names if not run.stack.is_running(name)]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited during the drain")
        if await outbox.count_documents({OutboxField.STATUS: OutboxStatus.PENDING.value}) == 0:
            return True
    return False


async def drain_with(run: Run, relays: int, tag: str) -> dict[str, Any]:
    """One drain of the backlog by ``relays`` processes; its rates and how they shared it."""
    cfg = run.config
    plan = run.plan
    database = f"bench_scale_{tag}"
    names = instance_names(relays)
    env = {
        "RELAY_DATABASE": database,
        "RELAY_TRANSACTIONAL_ID": f"bench-scale-{tag}",
        "RELAY_SLOTS": str(plan.relay_slots),
        # The gauges' periodic counts would load the server being measured.
        "RELAY_METRICS_INTERVAL_SECONDS": "60",
    }
    client = make_mongo_client(cfg.mongo_uri, 30.0, "bench-relays-scaling")
    try:
        await relay_drain.seed_backlog(
            client, database, plan.scaling_backlog, "ours", plan.relay_slots
        )
        started_at = time.time()
        # Spawn them all, then wait for each: they start together, as replicas would.
        for name in names:
            await asyncio.to_thread(run.stack.start, "relay", env, instance=name, wait=False)
        for name in names:
            await asyncio.to_thread(run.stack.start, "relay", env, instance=name)
        ready_after = round(time.time() - started_at, 2)
        recorders = run.start_profile(f"relays_scaling_{tag}", None)
        complete = await _wait_drained(run, client, database, names)
        await run.finish_profile(f"relays_scaling_{tag}", recorders)
        per_relay = {name: await _scrape(run.stack.port_of(name)) for name in names}
        rates = drain_rates(await _publish_marks(client, database), started_at)
    finally:
        for name in names:
            run.stop_service(name)
        await client.close()
        await run.drop_database(database)
    return {
        "relays": relays,
        "backlog": plan.scaling_backlog,
        "complete": complete,
        "ready_after_seconds": ready_after,
        **asdict(rates),
        "per_relay": per_relay,
        "shares": shares({name: figures["published"] for name, figures in per_relay.items()}),
    }


async def run_phase(run: Run) -> None:
    """Every process count of ``plan.relay_counts``, ``plan.repeats`` times, interleaved."""
    cfg = run.config
    plan = run.plan
    await ensure_topics(
        cfg.kafka_bootstrap, [relay_drain.BENCH_TOPIC], replication=cfg.kafka_replication
    )
    await wait_for_topics(cfg.kafka_bootstrap, [relay_drain.BENCH_TOPIC], 60)
    # Run i of each count sits at index i (None: that drain failed, recorded in ``failures``).
    runs: dict[str, list[dict[str, Any] | None]] = {str(n): [] for n in plan.relay_counts}
    run.results["relays_scaling"] = {
        "backlog": plan.scaling_backlog,
        "relay_slots": plan.relay_slots,
        "runs": runs,
    }
    for attempt in range(plan.repeats):
        for relays in plan.relay_counts:
            tag = f"{run.run_id}_{relays}_{attempt}"
            figure = await run.attempt(f"{relays} relay(s)", attempt, drain_with(run, relays, tag))
            runs[str(relays)].append(figure)
            if figure is None:
                continue
            print(
                f"relays scaling run {attempt + 1}/{plan.repeats}, {relays} relay(s): "
                f"{figure['steady_events_per_s']} ev/s steady, shares {figure['shares']}",
                flush=True,
            )
