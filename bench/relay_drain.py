"""Relay throughput and latency, next to the raw producer and the article's relay.

``python -m bench.relay_drain [--events 20000] [--article-events 2000] [--latency-events 200]``
against ``MONGO_URI`` / ``KAFKA_BOOTSTRAP_SERVERS`` (the embedded stack by default). Each part
uses a fresh database of its own, and the records go to a topic of their own
(``relay.bench.order.created``, same shape as ``order.created``):

1. **raw**: the same records (topic, key, value, headers) sent by an idempotent ``acks=all``
   producer with everything in flight: the ceiling for this broker, no MongoDB involved.
2. **relay**: our relay, in-process, draining a backlog of ``--events`` Pending events
   (select, send in one Kafka transaction per 500, one ``update_many`` mark).
3. **article**: bench/article_relay.py on ``--article-events`` (it moves at most 100 events
   per second by construction, so a 20,000 backlog would take minutes; the rate is the answer).
4. **latency**: one event inserted every 50 ms with the relay running; commit-to-publish is
   ``publishedAt - createdAt`` (both written on this host), p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

from bench import article_relay
from services.relay.main import Relay
from services.relay.publisher import OutboxEvent
from services.relay.settings import RelaySettings
from shared.contracts import AGGREGATE_ORDER, OutboxStatus, topic_for_event_type
from shared.events import OrderCreated
from shared.kafka import ensure_topics, make_producer
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import DEFAULT_PUBLISHED_TTL_SECONDS, OUTBOX_COLLECTION, ensure_outbox_indexes
from shared.settings import InfraSettings

PENDING = OutboxStatus.PENDING.value


# The benchmark publishes to a topic of its own, so no consumer of a shared broker processes its
# fake orders; the records are otherwise exactly what the relay sends for OrderCreated.
BENCH_EVENT_TYPE = "RelayBenchOrderCreated"
BENCH_TOPIC = topic_for_event_type(BENCH_EVENT_TYPE)


def make_event(aggregate_id: str | None = None) -> dict[str, Any]:
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
    }


async def seed(client: MongoClient, database: str, count: int) -> list[dict[str, Any]]:
    docs = [make_event() for _ in range(count)]
    outbox = client[database][OUTBOX_COLLECTION]
    for start in range(0, count, 1000):
        await outbox.insert_many(docs[start : start + 1000])
    return docs


# A drain that has not finished by then is reported as a failure, not waited on forever.
DRAIN_DEADLINE_SECONDS = 900.0


async def wait_drained(
    client: MongoClient, database: str, *, poll: float = 0.5, within: float = DRAIN_DEADLINE_SECONDS
) -> None:
    outbox = client[database][OUTBOX_COLLECTION]
    deadline = time.monotonic() + within
    # Polling the database is the measurement itself: there is no event to wait on.
    while await outbox.count_documents({"status": PENDING}):
        if time.monotonic() > deadline:
            raise TimeoutError(f"outbox of {database} not drained within {within:.0f} s")
        await asyncio.sleep(poll)


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


async def _timed_drain(
    client: MongoClient,
    database: str,
    count: int,
    relay: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> float:
    """Events per second for ``relay`` to drain a seeded backlog of ``count`` in ``database``.

    The relay's indexes exist before the clock starts, as in production (the order API creates
    them): otherwise the drain would mostly time an index build over the whole backlog.
    """
    try:
        await seed(client, database, count)
        await ensure_outbox_indexes(
            client[database][OUTBOX_COLLECTION], DEFAULT_PUBLISHED_TTL_SECONDS
        )
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(relay(stop))
        try:
            await wait_drained(client, database)
            elapsed = time.perf_counter() - started
        finally:
            stop.set()
            await task
        return count / elapsed
    finally:
        await client.drop_database(database)


async def bench_relay(infra: InfraSettings, client: MongoClient, count: int) -> float:
    database = f"relay_bench_{uuid.uuid4().hex[:6]}"
    relay = Relay(relay_settings(infra, database), client)
    return await _timed_drain(client, database, count, relay.run)


async def bench_article(infra: InfraSettings, client: MongoClient, count: int) -> float:
    database = f"relay_bench_article_{uuid.uuid4().hex[:6]}"

    async def article(stop: asyncio.Event) -> None:
        await article_relay.run(
            client[database][OUTBOX_COLLECTION], infra.kafka_bootstrap_servers, stop
        )

    return await _timed_drain(client, database, count, article)


async def bench_latency(infra: InfraSettings, client: MongoClient, count: int) -> dict[str, float]:
    database = f"relay_bench_latency_{uuid.uuid4().hex[:6]}"
    outbox = client[database][OUTBOX_COLLECTION]
    try:
        relay = Relay(relay_settings(infra, database), client)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        while not relay.lease.is_held():  # noqa: ASYNC110 - the lease has no event to await
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)  # let the change stream open
        ids = []
        for _ in range(count):
            doc = make_event()
            doc["createdAt"] = datetime.now(UTC)
            await outbox.insert_one(doc)
            ids.append(doc["_id"])
            await asyncio.sleep(0.05)
        await wait_drained(client, database, poll=0.05)
        stop.set()
        await task
        docs = await outbox.find({"_id": {"$in": ids}}).to_list()
        latencies = sorted(
            (d["publishedAt"] - d["createdAt"]).total_seconds() * 1000.0 for d in docs
        )
        return {
            "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        }
    finally:
        await client.drop_database(database)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--article-events", type=int, default=2_000)
    parser.add_argument("--latency-events", type=int, default=200)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["raw", "relay", "article", "latency"]
    )
    args = parser.parse_args()
    infra = InfraSettings()
    client = make_mongo_client(infra.mongo_uri, 120, "relay-bench")
    results: dict[str, Any] = {"events": args.events, "article_events": args.article_events}
    await ensure_topics(infra.kafka_bootstrap_servers, [BENCH_TOPIC])
    try:
        if "raw" not in args.skip:
            docs = [make_event() for _ in range(args.events)]
            results["raw_producer_per_s"] = round(
                await bench_raw(infra.kafka_bootstrap_servers, docs)
            )
            print(f"raw aiokafka producer: {results['raw_producer_per_s']} events/s", flush=True)
        if "relay" not in args.skip:
            results["relay_per_s"] = round(await bench_relay(infra, client, args.events))
            print(f"relay drain: {results['relay_per_s']} events/s", flush=True)
        if "article" not in args.skip:
            results["article_per_s"] = round(
                await bench_article(infra, client, args.article_events), 1
            )
            print(f"article relay drain: {results['article_per_s']} events/s", flush=True)
        if "latency" not in args.skip:
            results["latency"] = await bench_latency(infra, client, args.latency_events)
            print(f"commit-to-publish at light load: {results['latency']}", flush=True)
    finally:
        await client.close()
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
