"""A private world for the order's verdict consumer on the shared stack: inventory's three topics
(and their DLQs) under private names, a consumer group of its own, and a producer that writes
what inventory's relay writes (value = the event's JSON, key = the order id, the headers of
:class:`shared.contracts.Header`), so the tests do not wait for inventory."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.order.verdicts.main import SERVICE, run
from services.order.verdicts.settings import VerdictSettings
from shared.consumer import Delivery
from shared.contracts import (
    AGGREGATE_RESERVATION,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
    Header,
    dlq_topic_for,
    idempotency_key,
)
from shared.dlq import StoredDlqRecord, build_dlq_record, read_dlq, send_to_dlq
from shared.events import EventItem, InventoryEvent, StockRejected, StockReleased, StockReserved
from shared.kafka import Headers, encode_headers, ensure_topics, make_producer
from shared.redis import make_redis
from stack import Stack
from tests.background import finish_service_tasks

TOPIC_PARTITIONS = 3
# Reservation versions (shared.contracts): 1 the verdict, 2 the release.
_VERSION = {EVENT_STOCK_RESERVED: 1, EVENT_STOCK_REJECTED: 1, EVENT_STOCK_RELEASED: 2}


def reserved(order: dict[str, Any]) -> StockReserved:
    """Inventory's StockReserved for ``order`` (a body of the order API)."""
    return StockReserved.model_validate({**_answer(order), "reservedAt": datetime.now(UTC)})


def rejected(order: dict[str, Any]) -> StockRejected:
    """Inventory's StockRejected for ``order``: its first SKU short."""
    sku = order["items"][0]["sku"]
    return StockRejected.model_validate(
        {
            **_answer(order),
            "reason": f"insufficient stock: {sku} (wanted 2, available 0)",
            "shortSkus": [sku],
            "rejectedAt": datetime.now(UTC),
        }
    )


def released(order: dict[str, Any]) -> StockReleased:
    """Inventory's StockReleased for ``order``."""
    return StockReleased.model_validate(
        {
            "orderId": order["id"],
            "items": [{"sku": i["sku"], "quantity": i["quantity"]} for i in order["items"]],
            "releasedAt": datetime.now(UTC),
        }
    )


def _answer(order: dict[str, Any]) -> dict[str, Any]:
    return {
        "orderId": order["id"],
        "customerEmail": order["customerEmail"],
        "total": order["total"],
        "items": [EventItem.model_validate(i).model_dump(by_alias=True) for i in order["items"]],
    }


def event_type_of(event: InventoryEvent) -> str:
    if isinstance(event, StockReserved):
        return EVENT_STOCK_RESERVED
    if isinstance(event, StockRejected):
        return EVENT_STOCK_REJECTED
    return EVENT_STOCK_RELEASED


def _relay_headers(event: InventoryEvent, event_id: str) -> Headers:
    """The headers inventory's relay puts on ``event``'s record."""
    event_type = event_type_of(event)
    return encode_headers(
        {
            Header.EVENT_TYPE: event_type,
            Header.AGGREGATE_TYPE: AGGREGATE_RESERVATION,
            Header.AGGREGATE_ID: event.order_id,
            Header.AGGREGATE_VERSION: str(_VERSION[event_type]),
            Header.OCCURRED_AT: datetime.now(UTC).isoformat(),
            Header.IDEMPOTENCY_KEY: event_id,
        }
    )


def delivery_of(event: InventoryEvent, event_id: str) -> Delivery:
    """The delivery the engine hands the handler for ``event`` (for tests that call it)."""
    event_type = event_type_of(event)
    headers = {
        Header.EVENT_TYPE: event_type,
        Header.AGGREGATE_TYPE: AGGREGATE_RESERVATION,
        Header.AGGREGATE_ID: event.order_id,
        Header.AGGREGATE_VERSION: str(_VERSION[event_type]),
        Header.IDEMPOTENCY_KEY: event_id,
    }
    return Delivery("test", 0, 0, event.order_id.encode(), headers, event_id)


@dataclass
class VerdictWorld:
    stack: Stack
    database: str
    topics: dict[str, str]  # event type -> private topic
    group: str
    producer: AIOKafkaProducer
    redis: Redis
    tasks: dict[str, tuple[asyncio.Task[int], asyncio.Event]] = field(default_factory=dict)

    def settings(self, **overrides: Any) -> VerdictSettings:
        c = self.stack.config
        fields: dict[str, Any] = {
            "mongo_uri": c.mongo_uri,
            "kafka_bootstrap_servers": c.kafka_bootstrap,
            "redis_url": c.redis_url,
            "backoff_max_seconds": 1.0,
            "drain_seconds": 10.0,
            "port": 0,
            **self.settings_fields(),
        }
        return VerdictSettings(**{**fields, **overrides})

    def settings_fields(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "group_id": self.group,
            "topic": self.topics[EVENT_STOCK_RESERVED],
            "rejected_topic": self.topics[EVENT_STOCK_REJECTED],
            "released_topic": self.topics[EVENT_STOCK_RELEASED],
        }

    def env(self) -> dict[str, str]:
        """The same settings as ``ORDER_VERDICTS_*`` variables, for a process."""
        return {f"ORDER_VERDICTS_{k.upper()}": v for k, v in self.settings_fields().items()}

    def start(self, **overrides: Any) -> None:
        """Run the consumer in this process (``overrides``: settings fields)."""
        stop = asyncio.Event()
        settings = self.settings(**overrides)
        self.tasks["verdicts"] = (asyncio.create_task(run(settings, stop=stop)), stop)

    async def send(
        self,
        event: InventoryEvent,
        *,
        event_id: str | None = None,
        value: bytes | None = None,
    ) -> str:
        """Produce ``event`` as inventory's relay would; returns its event id."""
        event_id = event_id or uuid.uuid4().hex
        await self.producer.send_and_wait(
            self.topics[event_type_of(event)],
            key=event.order_id.encode(),
            value=value if value is not None else event.to_json().encode(),
            headers=_relay_headers(event, event_id),
        )
        return event_id

    async def dead_letter(self, event: InventoryEvent, event_id: str) -> None:
        """What this world's consumer writes to the DLQ when it gives up on ``event`` after
        three attempts (as if a bug since fixed had failed it)."""
        topic = self.topics[event_type_of(event)]
        record = build_dlq_record(
            topic=topic,
            partition=0,
            offset=42,
            key=event.order_id.encode(),
            value=event.to_json().encode(),
            headers=_relay_headers(event, event_id),
            reason="RuntimeError: a bug since fixed",
            retry_count=2,
            consumer_group=self.group,
        )
        await send_to_dlq(self.producer, dlq_topic_for(topic), record)

    async def done(self, event_type: str, event_id: str) -> bool:
        """The consumer finished with this event (its dedup key says done)."""
        key = idempotency_key(SERVICE, event_type, event_id)
        return bool(await self.redis.get(key) == b"done")

    async def dlq(self, event_type: str) -> list[StoredDlqRecord]:
        dlq_topic = dlq_topic_for(self.topics[event_type])
        return await read_dlq(self.stack.config.kafka_bootstrap, dlq_topic)


@contextlib.asynccontextmanager
async def verdict_world(stack: Stack, database: str) -> AsyncIterator[VerdictWorld]:
    suffix = uuid.uuid4().hex[:10]
    topics = {
        event_type: f"test.verdicts.{event_type.lower()}.{suffix}"
        for event_type in (EVENT_STOCK_RESERVED, EVENT_STOCK_REJECTED, EVENT_STOCK_RELEASED)
    }
    c = stack.config
    await ensure_topics(
        c.kafka_bootstrap,
        [name for topic in topics.values() for name in (topic, dlq_topic_for(topic))],
        TOPIC_PARTITIONS,
    )
    producer = make_producer(c.kafka_bootstrap)
    await producer.start()
    redis = make_redis(c.redis_url)
    world = VerdictWorld(stack, database, topics, f"order-{suffix}", producer, redis)
    try:
        yield world
    finally:
        for _, stop in world.tasks.values():
            stop.set()
        try:
            # A consumer that crashed during the test fails it here, by name.
            await finish_service_tasks({n: t for n, (t, _) in world.tasks.items()}, timeout=30)
        finally:
            await producer.stop()
            await redis.aclose()
