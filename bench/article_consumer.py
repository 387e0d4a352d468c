"""A faithful port of the seed article's idempotent consumer, for the benchmark's comparison.

The article (Node.js, kafkajs)::

    const idempotencyKey = `idem:order_created:${event.orderId}`;
    const alreadyProcessed = await redis.get(idempotencyKey);
    if (alreadyProcessed) return;
    await InventoryService.reserveItems(event.items);
    await EmailService.sendOrderConfirmation(event.userId, event.orderId);
    await redis.setEx(idempotencyKey, 172800, 'true');

    consumer.run({ eachMessage: ... })

What is kept from it, on purpose (this is the design being measured, bugs included):

* one consumer group doing both side effects, one message at a time (kafkajs ``eachMessage``
  with its default ``partitionsConsumedConcurrently: 1``), offsets committed after each batch
  (kafkajs ``autoCommit`` resolves offsets per message and commits per batch);
* one key shared by inventory and email, ``idem:order_created:{orderId}``, read with GET and
  written with SETEX *after* both side effects (the check-then-act race our claim/mark fixes).

What is ours, so that only the pipeline design differs between the two sides of the benchmark:
the side effects themselves are this repository's ``ReservationHandler`` (the same MongoDB
transaction) and ``ConfirmationSender`` (the same SMTP conversation: the confirmation our email
service sends on inventory's ``StockReserved``, built here from the order event once the
reservation took, with what inventory's event would carry). As the article's
``reserveItems`` throws when stock is short, an order inventory rejects gets no confirmation
and no key, and counts as a failure.

``python -m bench.article_consumer --group G [--topic T] [--database D] [--offset-reset latest]
[--ready-file F]``: runs until SIGTERM; writes ``F`` once partitions are assigned and positioned,
so a benchmark can start its load without losing the first events to ``latest``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from aiokafka import AIOKafkaConsumer

from services.email.handlers import make_sender
from services.email.settings import EmailSettings
from services.inventory.handlers import ReservationHandler
from services.inventory.models import ReservationStatus, ensure_indexes
from shared.consumer import Delivery
from shared.contracts import IDEMPOTENCY_TTL_SECONDS, ORDER_CREATED_TOPIC, Header
from shared.events import OrderCreated, StockReserved, parse_order_created
from shared.kafka import decode_headers
from shared.lifecycle import stop_event_on_signals
from shared.logging import configure_logging
from shared.mongo import make_mongo_client
from shared.redis import make_redis
from shared.settings import InfraSettings

log = logging.getLogger(__name__)

# The article's key: shared by inventory and email, keyed by order (not event) id. Deliberately
# not shared.contracts.idempotency_key, which fixes exactly this.
ARTICLE_KEY_FORMAT: Final = "idem:order_created:{order_id}"
ARTICLE_MARKER: Final = b"true"
# Bounded poll so a stop request is noticed within half a second.
POLL_TIMEOUT_MS: Final = 500


def article_key(order_id: str) -> str:
    return ARTICLE_KEY_FORMAT.format(order_id=order_id)


def confirmation_of(order: OrderCreated) -> StockReserved:
    """What our email service confirms from: the order's address, items and total, reserved
    now (the article's consumer sends the confirmation right after ``reserveItems``)."""
    return StockReserved.answering(order, reserved_at=datetime.now(UTC))


@dataclass
class ArticleConsumerStats:
    """What the port did; ``redis_round_trips`` counts GET and SETEX calls."""

    processed: int = 0
    duplicates: int = 0
    failures: int = 0
    redis_round_trips: int = 0
    first_at: float | None = None
    last_at: float | None = None
    per_message_seconds: list[float] = field(default_factory=list)

    def rate(self) -> float:
        """Messages handled per second between the first and the last one."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return self.processed / (self.last_at - self.first_at)


@dataclass(frozen=True)
class ArticleConsumerConfig:
    bootstrap: str
    mongo_uri: str
    redis_url: str
    group: str
    topic: str = ORDER_CREATED_TOPIC
    database: str = "inventory"
    offset_reset: Literal["earliest", "latest"] = "latest"
    mongo_timeout_seconds: float = 5.0


async def run_article_consumer(
    config: ArticleConsumerConfig,
    email: EmailSettings,
    stop: asyncio.Event,
    *,
    ready: asyncio.Event | None = None,
    stats: ArticleConsumerStats | None = None,
    limit: int | None = None,
) -> ArticleConsumerStats:
    """Consume until ``stop`` is set (or ``limit`` messages were handled), the article's way.

    ``ready`` is set once partitions are assigned and their positions resolved: events
    produced after that are consumed even with ``offset_reset="latest"``.
    """
    stats = stats or ArticleConsumerStats()
    mongo = make_mongo_client(config.mongo_uri, config.mongo_timeout_seconds, "article-consumer")
    redis = make_redis(config.redis_url)
    consumer = AIOKafkaConsumer(
        config.topic,
        bootstrap_servers=config.bootstrap,
        group_id=config.group,
        enable_auto_commit=False,  # committed per batch below, as kafkajs autoCommit does
        auto_offset_reset=config.offset_reset,
        max_poll_records=500,
    )
    try:
        await ensure_indexes(mongo, config.database)
        reserve = ReservationHandler(mongo, config.database).handle
        send = make_sender(email, redis).handle
        await consumer.start()
        while not stop.is_set():
            if limit is not None and stats.processed + stats.duplicates >= limit:
                break
            batch = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
            if ready is not None and not ready.is_set() and consumer.assignment():
                # Resolve every position now, so "latest" means "from this instant on".
                for tp in consumer.assignment():
                    await consumer.position(tp)
                ready.set()
            for tp, records in batch.items():
                for record in records:
                    started = time.perf_counter()
                    try:
                        event = parse_order_created(record.value)
                        headers = decode_headers(record.headers)
                        delivery = Delivery(
                            topic=tp.topic,
                            partition=tp.partition,
                            offset=record.offset,
                            key=record.key,
                            headers=headers,
                            event_id=headers.get(Header.IDEMPOTENCY_KEY, event.order_id),
                        )
                        key = article_key(event.order_id)
                        stats.redis_round_trips += 1
                        if await redis.get(key):
                            stats.duplicates += 1
                            continue
                        if await reserve(event, delivery) != ReservationStatus.RESERVED:
                            raise RuntimeError(f"order {event.order_id}: stock not reserved")
                        await send(confirmation_of(event), delivery)
                        stats.redis_round_trips += 1
                        await redis.setex(key, IDEMPOTENCY_TTL_SECONDS, ARTICLE_MARKER)
                    except Exception as exc:  # the article has no handler here; we log, go on
                        stats.failures += 1
                        log.warning(
                            "article consumer failed a message", extra={"reason": repr(exc)}
                        )
                        continue
                    now = time.perf_counter()
                    stats.per_message_seconds.append(now - started)
                    stats.processed += 1
                    stats.first_at = stats.first_at or started
                    stats.last_at = now
            if batch:
                await consumer.commit()
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        await redis.aclose()
        await mongo.close()
    return stats


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.article_consumer", description=__doc__)
    parser.add_argument("--group", required=True, help="consumer group (one per run)")
    parser.add_argument("--topic", default=ORDER_CREATED_TOPIC)
    parser.add_argument("--database", default="inventory", help="where reservations go")
    parser.add_argument("--offset-reset", choices=("earliest", "latest"), default="latest")
    parser.add_argument("--ready-file", type=Path, help="written once partitions are assigned")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    infra = InfraSettings()
    config = ArticleConsumerConfig(
        bootstrap=infra.kafka_bootstrap_servers,
        mongo_uri=infra.mongo_uri,
        redis_url=infra.redis_url,
        group=args.group,
        topic=args.topic,
        database=args.database,
        offset_reset=args.offset_reset,
        mongo_timeout_seconds=infra.mongo_timeout_seconds,
    )
    stop = stop_event_on_signals()
    ready = asyncio.Event()

    async def announce() -> None:
        await ready.wait()
        if args.ready_file is not None:
            args.ready_file.write_text("ready\n")
        log.info("article consumer assigned", extra={"group": config.group})

    announcer = asyncio.create_task(announce())
    try:
        stats = await run_article_consumer(config, EmailSettings(), stop, ready=ready)
    finally:
        announcer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announcer
    log.info(
        f"article consumer stopped: {stats.processed} handled, {stats.duplicates} duplicates",
        extra={"count": stats.processed},
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    configure_logging("article-consumer", "INFO")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
