"""Relay phase: our relay's drain next to its two ceilings and the article's relay.

All on a backlog of the same records (topic ``relay.bench.order.created``, same shape as
``order.created``), each in a fresh database:

1. **raw producer**: the records sent by an idempotent ``acks=all`` producer with everything in
   flight: the Kafka ceiling, no MongoDB involved.
2. **raw MongoDB**: with PyMongo alone, what the relay must do per event in MongoDB: read a
   batch of Pending events (its query, its index) and mark them Published (one bulk write
   in a majority transaction, as the relay's fenced mark is): the MongoDB ceiling.
3. **relay**: our relay, in-process, draining the backlog (bounded in time).
4. **article**: bench/article_relay.py (fixed-rate 500 ms rounds of 50, its own index only).
5. **latency**: one event inserted every 50 ms with the relay running; commit-to-publish is
   ``publishedAt - createdAt`` (both written on this host).

Each drain figure is measured ``plan.repeats`` times; the ratios are taken run by run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import PyMongoError

from bench import article_relay
from bench.run import CLEANUP_TIMEOUT, Run
from bench.stats import Distribution
from services.relay.main import Relay
from services.relay.publisher import OutboxEvent, published_fields
from services.relay.settings import RelaySettings
from shared.contracts import AGGREGATE_ORDER, OutboxStatus, topic_for_event_type
from shared.events import OrderCreated
from shared.kafka import ensure_topics, make_producer
from shared.mongo import MongoClient, make_mongo_client, run_in_transaction
from shared.outbox import (
    DEFAULT_PUBLISHED_TTL_SECONDS,
    OUTBOX_COLLECTION,
    OutboxField,
    ensure_outbox_indexes,
)
from shared.settings import InfraSettings
from shared.slots import DEFAULT_RELAY_SLOTS, slot_for
from stack.observe import wait_for_topics


@dataclass(frozen=True)
class _Where:
    """The part of a send's RecordMetadata the relay's mark records."""

    topic: str
    partition: int
    offset: int


PENDING = OutboxStatus.PENDING.value


# The benchmark publishes to a topic of its own, so no consumer of a shared broker processes its
# fake orders; the records are otherwise exactly what the relay sends for OrderCreated.
BENCH_EVENT_TYPE = "RelayBenchOrderCreated"
BENCH_TOPIC = topic_for_event_type(BENCH_EVENT_TYPE)


def make_event(aggregate_id: str | None = None, slots: int = DEFAULT_RELAY_SLOTS) -> dict[str, Any]:
    aggregate_id = aggregate_id or str(ObjectId())
    payload = OrderCreated.model_validate(
        {
            "orderId": aggregate_id,
            "userId": "user-1",
            "customerEmail": "buyer@example.com",
            "total": "25.00",
            "createdAt": datetime.now(UTC),
            "items": [{"sku": "SKU-1", "quantity": 2, "unitPrice": "12.50"}],
        }
    ).to_json()
    return {
        "_id": ObjectId(),
        "aggregateType": AGGREGATE_ORDER,
        "aggregateId": aggregate_id,
        "aggregateVersion": 1,
        "eventType": BENCH_EVENT_TYPE,
        "payload": payload,
        "status": PENDING,
        "attempts": 0,
        "createdAt": datetime.now(UTC),
        "publishedAt": None,
        "lastError": None,
        "traceparent": None,
        # As the order API stores it: the relay's slot scan finds it without a backfill.
        "slot": slot_for(aggregate_id, slots),
    }


async def seed(
    client: MongoClient, database: str, count: int, slots: int = DEFAULT_RELAY_SLOTS
) -> list[dict[str, Any]]:
    docs = [make_event(slots=slots) for _ in range(count)]
    outbox = client[database][OUTBOX_COLLECTION]
    for start in range(0, count, 1000):
        await outbox.insert_many(docs[start : start + 1000])
    return docs


async def bench_raw(bootstrap: str, docs: list[dict[str, Any]]) -> float:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        records = [OutboxEvent.from_doc(d).to_record() for d in docs]
        started = time.perf_counter()
        futures = [
            await producer.send(topic, value=value, key=key, headers=headers)
            for topic, key, value, headers in records
        ]
        await asyncio.gather(*futures)
        return len(docs) / (time.perf_counter() - started)
    finally:
        await producer.stop()


def relay_settings(infra: InfraSettings, database: str, **overrides: Any) -> RelaySettings:
    return RelaySettings(
        mongo_uri=infra.mongo_uri,
        kafka_bootstrap_servers=infra.kafka_bootstrap_servers,
        database=database,
        transactional_id=f"bench-{database}",
        port=0,
        metrics_interval_seconds=30,
        **overrides,
    )


def _published_counter(relay: Relay) -> Callable[[], Awaitable[int]]:
    async def published() -> int:
        # The relay's own counter: no query against the server being measured.
        value = relay.metrics.registry.get_sample_value("relay_published_total")
        return int(value or 0)

    return published


async def bench_latency(
    infra: InfraSettings,
    client: MongoClient,
    count: int,
    within: float,
    database: str | None = None,
) -> Distribution:
    """Commit-to-publish of ``count`` events inserted 50 ms apart with the relay running, on
    a fresh ``database`` that the caller drops (without one: a database of its own, dropped
    here with :func:`drop_quietly`)."""
    if database is None:
        own = f"bench_relay_latency_{uuid.uuid4().hex[:6]}"
        try:
            return await bench_latency(infra, client, count, within, own)
        finally:
            await drop_quietly(client, own)
    outbox = client[database][OUTBOX_COLLECTION]
    relay = Relay(relay_settings(infra, database), client)
    published = _published_counter(relay)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    deadline = time.monotonic() + within
    try:
        while not relay.owned_slots():
            if task.done() or time.monotonic() > deadline:
                raise RuntimeError("the relay did not take the lease")
            await asyncio.sleep(0.05)  # poll interval, bounded by the deadline
        ids = []
        for _ in range(count):
            doc = make_event()
            doc["createdAt"] = datetime.now(UTC)
            await outbox.insert_one(doc)
            ids.append(doc["_id"])
            await asyncio.sleep(0.05)  # the load's schedule, not a synchronisation wait
        while await published() < count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # poll interval of an in-process counter, bounded
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    docs = await outbox.find({"_id": {"$in": ids}}).to_list()
    latencies = [
        (d["publishedAt"] - d["createdAt"]).total_seconds() * 1000.0
        for d in docs
        if d.get("publishedAt") is not None
    ]
    return Distribution.of(latencies, missing=count - len(latencies))


async def drain(
    client: MongoClient,
    database: str,
    backlog: int,
    limit: float,
    runner: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    progress: Callable[[], Awaitable[int]] | None = None,
) -> dict[str, Any]:
    """Run ``runner`` on a seeded outbox until no event is Pending or ``limit`` seconds passed.

    The rate is what drained over the time it took, so a drain cut short by the limit still
    yields a measured figure (marked ``complete: false``). The Pending count is polled once a
    second: the profile showed that polling it every 200 ms cost the server a fifth of its time.
    ``progress`` (events drained so far) replaces that count when the runner can tell.
    """
    outbox = client[database][OUTBOX_COLLECTION]
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(runner(stop))
    remaining = backlog
    try:
        while time.perf_counter() - started < limit:
            # Poll interval of the drain check, bounded by ``limit``: the in-process counter is
            # free to read, the server-side count is not.
            await asyncio.sleep(0.1 if progress is not None else 1.0)
            if task.done():
                task.result()
                raise RuntimeError("the relay stopped before the backlog drained")
            if progress is not None:
                remaining = backlog - await progress()
            else:
                remaining = await outbox.count_documents({"status": PENDING})
            if remaining <= 0:
                break
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    drained = backlog - max(0, remaining)
    return {
        "events_per_s": round(drained / elapsed, 1),
        "drained": drained,
        "backlog": backlog,
        "seconds": round(elapsed, 1),
        "complete": remaining <= 0,
    }


async def raw_mongo_relay_work(
    client: MongoClient, database: str, backlog: int, limit: float, batch: int
) -> dict[str, Any]:
    """Events/s of the relay's MongoDB work alone on a seeded backlog: read ``batch`` Pending
    events by the relay's query and index, mark them Published with the relay's bulk write of
    per-event updates (``published_fields``) in a majority transaction; no Kafka, no relay
    loop."""
    outbox = client[database][OUTBOX_COLLECTION]
    f = OutboxField
    done = 0
    started = time.perf_counter()
    while done < backlog and time.perf_counter() - started < limit:
        docs = (
            await outbox.find({f.STATUS: PENDING})
            .sort([(f.STATUS, 1), (f.CREATED_AT, 1)])
            .limit(batch)
            .to_list()
        )
        if not docs:
            break
        ids = [d["_id"] for d in docs]

        async def mark(
            session: AsyncClientSession, ids: list[Any] = ids, first: int = done
        ) -> None:
            # The relay's own mark: one bulk write of per-event updates (each event records
            # where Kafka put it), in a majority transaction. The positions are made up here.
            now = datetime.now(UTC)
            await outbox.bulk_write(
                [
                    UpdateOne(
                        {f.ID: event_id, f.STATUS: PENDING},
                        {"$set": published_fields(_Where(BENCH_TOPIC, 0, n), 1, now)},
                    )
                    for n, event_id in enumerate(ids, start=first)
                ],
                ordered=False,
                session=session,
            )

        await run_in_transaction(client, mark)
        done += len(ids)
    elapsed = time.perf_counter() - started
    return {
        "events_per_s": round(done / elapsed, 1),
        "drained": done,
        "backlog": backlog,
        "batch": batch,
        "complete": done >= backlog,
    }


async def drop_quietly(client: MongoClient, database: str) -> None:
    """Clean-up only, for a caller without a :class:`Run` to record it in (a phase uses
    ``Run.drop_database``): a slow or failed drop is printed, never raised."""
    try:
        await asyncio.wait_for(client.drop_database(database), CLEANUP_TIMEOUT)
    except (TimeoutError, PyMongoError) as exc:
        print(f"(clean-up: could not drop {database}: {exc!r})", flush=True)


async def seed_backlog(
    client: MongoClient,
    database: str,
    count: int,
    indexes: str,
    slots: int = DEFAULT_RELAY_SLOTS,
) -> None:
    """A fresh backlog with the indexes first, as in production (the order API creates them
    before any event exists): otherwise the drain would mostly time an index build. Each
    event carries its slot among ``slots``, as the order API stores it."""
    outbox = client[database][OUTBOX_COLLECTION]
    if indexes == "ours":
        await ensure_outbox_indexes(outbox, DEFAULT_PUBLISHED_TTL_SECONDS)
    else:
        await article_relay.ensure_article_indexes(outbox)
    await asyncio.wait_for(seed(client, database, count, slots), 300)


async def _relay_run(
    run: Run, client: MongoClient, infra: InfraSettings, tag: str, attempt: int
) -> dict[str, dict[str, Any] | None]:
    """One run of each figure, each on a fresh database dropped after its window; a figure
    that fails is recorded (None) and the others are still measured."""
    cfg = run.config
    plan = run.plan
    batch = relay_settings(infra, "unused").batch_size

    async def raw_producer() -> dict[str, Any]:
        docs = [make_event() for _ in range(plan.backlog)]
        raw = await asyncio.wait_for(bench_raw(cfg.kafka_bootstrap, docs), 120)
        return {"msgs_per_s": round(raw, 1), "messages": plan.backlog}

    async def raw_mongo(database: str) -> dict[str, Any]:
        await seed_backlog(client, database, plan.backlog, "ours")
        return await raw_mongo_relay_work(
            client, database, plan.backlog, plan.relay_timeout_seconds, batch
        )

    async def relay(database: str) -> dict[str, Any]:
        await seed_backlog(client, database, plan.backlog, "ours")
        relay = Relay(relay_settings(infra, database), client)
        recorders = run.start_profile(f"relay_drain_{attempt}", None)
        figure = await drain(
            client,
            database,
            plan.backlog,
            plan.relay_timeout_seconds,
            relay.run,
            _published_counter(relay),
        )
        await run.finish_profile(f"relay_drain_{attempt}", recorders)
        return figure

    async def article(database: str) -> dict[str, Any]:
        await seed_backlog(client, database, plan.article_backlog, "article")
        outbox = client[database][OUTBOX_COLLECTION]

        async def runner(stop: asyncio.Event) -> None:
            await article_relay.run(outbox, cfg.kafka_bootstrap, stop)

        return await drain(
            client, database, plan.article_backlog, plan.article_timeout_seconds, runner
        )

    figures: dict[str, dict[str, Any] | None] = {
        "raw_producer": await run.attempt("raw_producer", attempt, raw_producer())
    }
    for name, body, database in (
        ("raw_mongo", raw_mongo, f"bench_relay_rawmongo_{tag}"),
        ("relay", relay, f"bench_relay_{tag}"),
        ("article_relay", article, f"bench_article_relay_{tag}"),
    ):
        figures[name] = await run.attempt(name, attempt, body(database))
        await run.drop_database(database)
    return figures


async def run_phase(run: Run) -> None:
    """Raw producer, raw MongoDB, our relay and the article's relay, ``plan.repeats`` times,
    then the relay's commit-to-publish latency at light load."""
    cfg = run.config
    plan = run.plan
    infra = InfraSettings(mongo_uri=cfg.mongo_uri, kafka_bootstrap_servers=cfg.kafka_bootstrap)
    client = make_mongo_client(cfg.mongo_uri, 30.0, "bench-relay")
    await ensure_topics(cfg.kafka_bootstrap, [BENCH_TOPIC], replication=cfg.kafka_replication)
    await wait_for_topics(cfg.kafka_bootstrap, [BENCH_TOPIC], 60)
    # Run i of each figure sits at index i (None: that run failed, recorded in ``failures``).
    runs: dict[str, list[dict[str, Any] | None]] = {"raw_producer": [], "raw_mongo": [],
                                                    "relay": [], "article_relay": []}  # fmt: skip
    run.results["relay_runs"] = runs
    try:
        for attempt in range(plan.repeats):
            figures = await _relay_run(run, client, infra, f"{run.run_id}_{attempt}", attempt)
            for name, figure in figures.items():
                runs[name].append(figure)
            shown = {
                k: (v or {}).get("events_per_s", (v or {}).get("msgs_per_s"))
                for k, v in figures.items()
            }
            print(f"relay run {attempt + 1}/{plan.repeats}: {shown}", flush=True)
        database = f"bench_relay_latency_{run.run_id}"
        latency = await run.attempt(
            "latency",
            None,
            bench_latency(
                infra, client, plan.latency_events, plan.latency_events * 0.05 + 60, database
            ),
        )
        await run.drop_database(database)
    finally:
        await client.close()
    if latency is not None:
        run.results["relay_latency"] = asdict(latency)
