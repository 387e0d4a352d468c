"""Consumers phase: each consumer's drain rate from a backlog, and its Redis cost per message.

``plan.consumer_backlog`` order.created records go to a private topic (6 partitions), and the
``StockReserved`` inventory would announce for each of those orders to a second one (what our
email service consumes); then each consumer, in-process and with its real handler
(``IdempotentConsumer``), drains its backlog from a fresh consumer group, bounded in time:
inventory (claim, one MongoDB transaction, mark) the orders, email (claim, one SMTP
conversation, mark) the verdicts, then the article's consumer (both side effects, one message at
a time) the orders. The rate runs from the first finished record (the group join is reported
apart).
All of it ``plan.repeats`` times, each on a backlog of its own (``consumer_runs`` in the JSON);
the report gives each rate's spread and the ratio to the article's consumer run by run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.article_consumer import (
    ArticleConsumerConfig,
    ArticleConsumerStats,
    confirmation_of,
    run_article_consumer,
)
from bench.e2e_latency import BENCH_SKUS, seed_bench_stock
from bench.run import Run
from services.email.handlers import make_sender
from services.email.settings import EmailSettings
from services.inventory.handlers import ReservationHandler
from services.inventory.models import ensure_indexes
from services.inventory.settings import InventorySettings
from shared.consumer import ConsumerServiceSettings, IdempotentConsumer, Parser
from shared.contracts import (
    EVENT_ORDER_CREATED,
    EVENT_STOCK_RESERVED,
    TOPIC_PARTITIONS,
    Header,
    dlq_topic_for,
)
from shared.events import OrderCreated, StockReserved, parse_order_created, parse_stock_reserved
from shared.kafka import encode_headers, ensure_topics, make_producer
from shared.mongo import make_mongo_client
from shared.redis import make_redis
from stack.observe import wait_for_topics


def backlog_orders(events: int) -> list[OrderCreated]:
    """``events`` fresh orders (ids unique to this call) over five of the bench's SKUs (each
    consumer's database gets their endless stock, :func:`seed_bench_stock`: every order is
    reserved, by inventory as by the article's consumer)."""
    created = datetime.now(UTC)
    return [
        OrderCreated.model_validate(
            {
                "orderId": f"bench-{n}-{uuid.uuid4().hex[:8]}",
                "userId": "user-1",
                "customerEmail": "buyer@example.com",
                "total": "25.00",
                "createdAt": created,
                "items": [{"sku": BENCH_SKUS[n % 5], "quantity": 2, "unitPrice": "12.50"}],
            }
        )
        for n in range(events)
    ]


async def produce_backlog(
    bootstrap: str,
    topic: str,
    events: Sequence[OrderCreated | StockReserved],
    event_type: str = EVENT_ORDER_CREATED,
) -> None:
    """Each event to ``topic``, keyed by its order id, with the headers the relay sets."""
    producer = make_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        pending = []
        for event in events:
            headers = encode_headers(
                {Header.IDEMPOTENCY_KEY: uuid.uuid4().hex, Header.EVENT_TYPE: event_type}
            )
            key, value = event.order_id.encode(), event.to_json().encode()
            pending.append(await producer.send(topic, key=key, value=value, headers=headers))
            if len(pending) >= 2_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Drained:
    """What one consumer drains: its settings (group, topic), its real handler, and the event
    type and parser of the records on its topic."""

    settings: ConsumerServiceSettings
    handler: Any
    event_type: str = EVENT_ORDER_CREATED
    parse: Parser[Any] = parse_order_created


async def drain(
    drained: Drained, service: str, redis_url: str, events: int, limit: float
) -> dict[str, Any]:
    """One consumer service's loop (``IdempotentConsumer``, its real handler) on the backlog,
    until it handled ``events`` or ``limit`` seconds passed; the rate is over what it handled,
    from the first finished record (the group join is reported separately)."""
    redis = make_redis(redis_url)
    consumer: IdempotentConsumer[Any] = IdempotentConsumer(
        drained.settings,
        service=service,
        redis=redis,
        parse=drained.parse,
        handler=drained.handler,
        event_type=drained.event_type,
    )

    def handled() -> int:
        total = 0.0
        for metric in consumer.metrics.registry.collect():
            if metric.name == "consumer_messages_processed":
                total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return int(total)

    stop = asyncio.Event()
    started = time.perf_counter()
    first: float | None = None
    task = asyncio.create_task(consumer.run(stop))
    try:
        while (count := handled()) < events and time.perf_counter() - started < limit:
            if first is None and count > 0:
                first = time.perf_counter()
            if task.done():
                task.result()
                raise RuntimeError(f"{service}: consumer stopped early")
            await asyncio.sleep(0.05)  # polling an in-process counter, bounded by ``limit``
        finished = time.perf_counter()
        count = handled()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await redis.aclose()
    first = first or started
    return {
        "msgs_per_s": round(count / max(finished - first, 1e-9), 1),
        "handled": count,
        "complete": count >= events,
        "join_seconds": round(first - started, 2),
        "redis_round_trips_per_msg": round(consumer.store.round_trips / max(1, count), 3),
    }


async def _article_consumer_drain(
    run: Run, topic: str, tag: str, events: int, limit: float
) -> dict[str, Any]:
    """The article's consumer (both side effects, one message at a time) on the same backlog."""
    cfg = run.config
    database = f"bench_cons_art_{tag}"
    await seed_bench_stock(cfg.mongo_uri, database)
    config = ArticleConsumerConfig(
        bootstrap=cfg.kafka_bootstrap,
        mongo_uri=cfg.mongo_uri,
        redis_url=cfg.redis_url,
        group=f"bench-article-drain-{tag}",
        topic=topic,
        database=database,
        offset_reset="earliest",
    )
    stats = ArticleConsumerStats()
    stop = asyncio.Event()
    complete = True
    try:
        await asyncio.wait_for(
            run_article_consumer(config, EmailSettings(), stop, stats=stats, limit=events), limit
        )
    except TimeoutError:
        complete = False  # the rate so far is still a measured rate; say it was cut short
    finally:
        await run.drop_database(database)
    return {
        "msgs_per_s": round(stats.rate(), 1),
        "handled": stats.processed,
        "complete": complete,
        "redis_round_trips_per_msg": round(stats.redis_round_trips / max(1, stats.processed), 3),
        "note": "inventory and email side effects in one sequential consumer (the article's)",
    }


async def _one_run(
    run: Run, tag: str, attempt: int, limit: float
) -> dict[str, dict[str, Any] | None]:
    """Each consumer once, on a backlog of its own run: a topic of fresh orders (the article's
    dedup key is the order id, so a second pass over the same orders would be all duplicates),
    fresh groups, dedup key spaces and inventory database."""
    cfg = run.config
    events = run.plan.consumer_backlog
    topic = f"bench.consumers.{tag}"
    # The verdicts of the same orders: what the email service consumes.
    reserved_topic = f"{topic}.reserved"
    database = f"bench_cons_inv_{tag}"
    topics = [topic, reserved_topic]
    await ensure_topics(
        cfg.kafka_bootstrap,
        [*topics, *map(dlq_topic_for, topics)],
        TOPIC_PARTITIONS,
        replication=cfg.kafka_replication,
    )
    await wait_for_topics(cfg.kafka_bootstrap, topics, 60)
    orders = backlog_orders(events)
    await asyncio.wait_for(produce_backlog(cfg.kafka_bootstrap, topic, orders), 120)
    verdicts = [confirmation_of(order) for order in orders]
    await asyncio.wait_for(
        produce_backlog(cfg.kafka_bootstrap, reserved_topic, verdicts, EVENT_STOCK_RESERVED), 120
    )
    mongo = make_mongo_client(cfg.mongo_uri, 30.0, "bench-consumers")
    # The email handler's per-order state (confirmation vs cancellation) lives in Redis.
    states_redis = make_redis(cfg.redis_url)
    figures: dict[str, dict[str, Any] | None] = {}
    try:
        await ensure_indexes(mongo, database)
        await seed_bench_stock(cfg.mongo_uri, database)
        inventory = InventorySettings(
            group_id=f"bench-inv-{tag}", database=database, topic=topic, port=0
        )
        email = EmailSettings(
            group_id=f"bench-email-{tag}",
            topic=reserved_topic,
            reserved_topic=reserved_topic,
            port=0,
        )
        plan: list[tuple[str, Drained]] = [
            ("inventory", Drained(inventory, ReservationHandler(mongo, database).handle)),
            (
                "email",
                Drained(
                    email,
                    make_sender(email, states_redis).handle,
                    EVENT_STOCK_RESERVED,
                    parse_stock_reserved,
                ),
            ),
        ]
        for name, drained in plan:
            recorders = run.start_profile(f"consumer_{name}_{tag}", None)
            one = drain(drained, f"bench-{name}-{tag}", cfg.redis_url, events, limit)
            figures[name] = await run.attempt(name, attempt, one)
            await run.finish_profile(f"consumer_{name}_{tag}", recorders)
        article = _article_consumer_drain(run, topic, tag, events, limit)
        figures["article"] = await run.attempt("article", attempt, article)
    finally:
        await mongo.close()
        await states_redis.aclose()
        await run.drop_database(database)
    return figures


async def run_phase(run: Run) -> None:
    """Each consumer's drain rate from a backlog, then the article's consumer on the same
    backlog; ``plan.repeats`` times (the report takes the spread and the per-run ratios)."""
    # Run i of each consumer sits at index i (None: that drain failed, see ``failures``).
    runs: dict[str, list[dict[str, Any] | None]] = {"inventory": [], "email": [], "article": []}
    run.results["consumers"] = {
        "backlog": run.plan.consumer_backlog,
        "topic_partitions": TOPIC_PARTITIONS,
    }
    run.results["consumer_runs"] = runs
    for attempt in range(run.plan.repeats):
        tag = f"{run.run_id}_{attempt}"
        one = _one_run(run, tag, attempt, run.plan.consumer_timeout_seconds)
        # A run whose backlog could not be set up has no figure for any consumer.
        figures = await run.attempt("backlog", attempt, one) or {}
        for name in runs:
            runs[name].append(figures.get(name))
        rates = {name: (figure or {}).get("msgs_per_s") for name, figure in figures.items()}
        print(f"consumers run {attempt + 1}/{run.plan.repeats}: {rates}", flush=True)
