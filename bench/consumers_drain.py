"""Consumer throughput from a backlog, and the Redis cost of the dedup check.

``python -m bench.consumers_drain [--events 20000]`` against ``KAFKA_BOOTSTRAP_SERVERS`` /
``MONGO_URI`` / ``REDIS_URL`` / ``SMTP_HOST:SMTP_PORT`` (the embedded stack by default). It
produces ``--events`` order.created records to a private topic (6 partitions), then lets each
consumer, in-process and with its real handler, drain the backlog from a fresh consumer group:

1. **inventory**: claim, one MongoDB transaction per event (reservation + stock decrement), mark.
2. **duplicates**: inventory again on the same backlog with a new group: every record is a
   duplicate, so this is the cost of recognising one (one Redis round trip, nothing else).
3. **email**: claim, one SMTP conversation per event (the sink fsyncs one .eml per message),
   mark; timed on the first ``--email-events`` records of the backlog (default: all).

For each: messages per second over the drain (first record done to last) and from start (with
the group join), and Redis round trips per message counted by the idempotency store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from services.email.handlers import make_sender
from services.email.settings import EmailSettings
from services.inventory.handlers import ReservationHandler
from services.inventory.models import STOCK, ensure_indexes
from services.inventory.settings import InventorySettings
from shared.consumer import ConsumerServiceSettings, Delivery, IdempotentConsumer
from shared.contracts import EVENT_ORDER_CREATED, TOPIC_PARTITIONS, Header, dlq_topic_for
from shared.events import OrderCreated, parse_order_created
from shared.kafka import encode_headers, ensure_topics, make_producer
from shared.mongo import make_mongo_client
from shared.redis import make_redis
from shared.settings import InfraSettings

Handler = Callable[[OrderCreated, Delivery], Awaitable[str]]


async def produce_backlog(bootstrap: str, topic: str, events: int) -> None:
    producer = make_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        created = datetime.now(UTC)
        pending = []
        for n in range(events):
            order_id = f"bench-{n}-{uuid.uuid4().hex[:8]}"
            value = (
                OrderCreated.model_validate(
                    {
                        "orderId": order_id,
                        "userId": "user-1",
                        "customerEmail": "buyer@example.com",
                        "total": "25.00",
                        "createdAt": created,
                        "items": [{"sku": f"SKU-{n % 5 + 1}", "quantity": 2, "unitPrice": "12.50"}],
                    }
                )
                .to_json()
                .encode()
            )
            headers = encode_headers(
                {Header.IDEMPOTENCY_KEY: uuid.uuid4().hex, Header.EVENT_TYPE: EVENT_ORDER_CREATED}
            )
            pending.append(
                await producer.send(topic, key=order_id.encode(), value=value, headers=headers)
            )
            if len(pending) >= 2_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def drain(
    name: str,
    settings: ConsumerServiceSettings,
    service: str,
    handler: Handler,
    redis_url: str,
    events: int,
) -> dict[str, Any]:
    redis = make_redis(redis_url)
    consumer = IdempotentConsumer(
        settings, service=service, redis=redis, parse=parse_order_created, handler=handler
    )
    first: float | None = None

    def done() -> float:
        total = 0.0
        for metric in consumer.metrics.registry.collect():
            if metric.name == "consumer_messages_processed":
                total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return total

    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run(stop))
    try:
        while (count := done()) < events:
            if first is None and count > 0:
                first = time.perf_counter()
            if task.done():
                task.result()
                raise RuntimeError(f"{name}: consumer stopped early")
            await asyncio.sleep(0.05)  # polling a counter, not synchronising on time
        finished = time.perf_counter()
    finally:
        stop.set()
        await task
        await redis.aclose()
    first = first or started
    return {
        "consumer": name,
        "events": events,
        "seconds_from_start": round(finished - started, 2),
        "msgs_per_s_from_start": round(events / (finished - started), 1),
        "msgs_per_s_drain": round(events / max(finished - first, 1e-9), 1),
        "redis_round_trips_per_msg": round(consumer.store.round_trips / events, 3),
        "duplicates": int(consumer.metrics.duplicates._value.get()),
    }


def report(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


async def main_async(events: int, email_events: int) -> list[dict[str, Any]]:
    infra = InfraSettings()
    suffix = uuid.uuid4().hex[:8]
    topic = f"bench.consumers.{suffix}"
    database = f"bench_inventory_{suffix}"
    await ensure_topics(
        infra.kafka_bootstrap_servers, [topic, dlq_topic_for(topic)], TOPIC_PARTITIONS
    )
    await produce_backlog(infra.kafka_bootstrap_servers, topic, events)

    mongo = make_mongo_client(infra.mongo_uri, infra.mongo_timeout_seconds, "bench")
    # The email handler's per-order state (confirmation vs cancellation) lives in Redis.
    states_redis = make_redis(infra.redis_url)
    results = []
    try:
        await ensure_indexes(mongo, database)
        await mongo[database][STOCK].insert_many(
            [{"sku": f"SKU-{n}", "available": 10 * events} for n in range(1, 6)]
        )
        common: dict[str, Any] = {"topic": topic, "port": 0}
        # Inventory first, then the duplicates pass reusing inventory's key space (a new group
        # re-reads the backlog; every key already says done), then email.
        inventory = InventorySettings(group_id=f"bench-inv-{suffix}", database=database, **common)
        handler = ReservationHandler(mongo, database).handle
        service = f"bench-inv-{suffix}"
        results.append(
            await drain("inventory", inventory, service, handler, infra.redis_url, events)
        )
        report(results[-1])
        again = InventorySettings(group_id=f"bench-inv2-{suffix}", database=database, **common)
        results.append(
            await drain(
                "inventory (all duplicates)", again, service, handler, infra.redis_url, events
            )
        )
        report(results[-1])
        email = EmailSettings(group_id=f"bench-email-{suffix}", **common)
        results.append(
            await drain(
                "email",
                email,
                f"bench-email-{suffix}",
                make_sender(email, states_redis).handle,
                infra.redis_url,
                email_events,
            )
        )
        report(results[-1])
    finally:
        await mongo.drop_database(database)
        await mongo.close()
        await states_redis.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.consumers_drain")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--email-events",
        type=int,
        default=None,
        help="time the email consumer on the first N records of the backlog (default: all)",
    )
    args = parser.parse_args()
    asyncio.run(main_async(args.events, args.email_events or args.events))


if __name__ == "__main__":
    main()
