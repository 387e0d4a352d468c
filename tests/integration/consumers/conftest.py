"""Fixtures for the consumer tests: a private topic, database and consumer groups per test, the
two consumers running in-process against the embedded stack, and helpers to produce events and
look at their effects (reservations, .eml files, Redis keys, DLQ records)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.email.main import run as run_email
from services.email.settings import EmailSettings
from services.inventory.main import run as run_inventory
from services.inventory.models import RESERVATIONS, STOCK, ensure_indexes
from services.inventory.settings import InventorySettings
from shared.contracts import (
    AGGREGATE_ORDER,
    AGGREGATE_RESERVATION,
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RESERVED,
    Header,
    dlq_topic_for,
)
from shared.dlq import StoredDlqRecord, build_dlq_record, read_dlq, send_to_dlq
from shared.events import OrderCancelled, OrderCreated, StockRejected, StockReserved
from shared.kafka import encode_headers, ensure_topics, make_producer
from shared.mongo import MongoClient, make_mongo_client
from shared.redis import make_redis
from stack import Stack
from tests.background import finish_service_tasks
from tests.order_events import cancel_event, order_event, rejected_event, reserved_event

__all__ = [
    "Pipeline",
    "cancel_event",
    "event_headers",
    "order_event",
    "poison_values",
    "rejected_event",
    "reserved_event",
]

TOPIC_PARTITIONS = 3


def event_headers(
    event_id: str | None,
    order_id: str,
    *,
    event_type: str = EVENT_ORDER_CREATED,
    version: int = 1,
    aggregate_type: str = AGGREGATE_ORDER,
) -> list[tuple[str, bytes]]:
    headers = {
        Header.EVENT_TYPE: event_type,
        Header.AGGREGATE_TYPE: aggregate_type,
        Header.AGGREGATE_ID: order_id,
        Header.AGGREGATE_VERSION: str(version),
        Header.OCCURRED_AT: datetime.now(UTC).isoformat(),
    }
    if event_id is not None:
        headers[Header.IDEMPOTENCY_KEY] = event_id
    return encode_headers(headers)


@dataclass
class Pipeline:
    """One test's private consumer world on the shared stack."""

    stack: Stack
    topic: str
    cancelled_topic: str
    database: str
    inventory_group: str
    email_group: str
    producer: AIOKafkaProducer
    mongo: MongoClient
    redis: Redis
    tasks: dict[str, tuple[asyncio.Task[int], asyncio.Event]] = field(default_factory=dict)
    # Inventory's verdict topics, which email reads (the tests produce the verdicts themselves).
    reserved_topic: str = ""
    rejected_topic: str = ""

    @property
    def dlq_topic(self) -> str:
        return dlq_topic_for(self.topic)

    def env(self) -> dict[str, str]:
        """Environment for service processes started with ``stack.start``."""
        return {
            "INVENTORY_TOPIC": self.topic,
            "INVENTORY_CANCELLED_TOPIC": self.cancelled_topic,
            "INVENTORY_GROUP_ID": self.inventory_group,
            "INVENTORY_DATABASE": self.database,
            # Email does not read the creation: named so that a change that made it would.
            "EMAIL_TOPIC": self.topic,
            "EMAIL_RESERVED_TOPIC": self.reserved_topic,
            "EMAIL_REJECTED_TOPIC": self.rejected_topic,
            "EMAIL_CANCELLED_TOPIC": self.cancelled_topic,
            "EMAIL_GROUP_ID": self.email_group,
        }

    def inventory_settings(self, **overrides: Any) -> InventorySettings:
        return InventorySettings(
            **self._infra(),
            topic=self.topic,
            cancelled_topic=self.cancelled_topic,
            group_id=self.inventory_group,
            database=self.database,
            port=0,
            **overrides,
        )

    def email_settings(self, **overrides: Any) -> EmailSettings:
        return EmailSettings(
            **self._infra(),
            topic=self.topic,  # not read by email (see env)
            reserved_topic=self.reserved_topic,
            rejected_topic=self.rejected_topic,
            cancelled_topic=self.cancelled_topic,
            group_id=self.email_group,
            port=0,
            **overrides,
        )

    def _infra(self) -> dict[str, Any]:
        c = self.stack.config
        return {
            "mongo_uri": c.mongo_uri,
            "kafka_bootstrap_servers": c.kafka_bootstrap,
            "redis_url": c.redis_url,
            "smtp_host": c.smtp_host,
            "smtp_port": c.smtp_port,
            "backoff_max_seconds": 1.0,
            "drain_seconds": 10.0,
        }

    def start(self, *names: str, **overrides: Any) -> None:
        """Run the named consumers in-process (``inventory``, ``email``)."""
        for name in names or ("inventory", "email"):
            stop = asyncio.Event()
            if name == "inventory":
                coro = run_inventory(self.inventory_settings(**overrides), stop=stop)
            else:
                coro = run_email(self.email_settings(**overrides), stop=stop)
            self.tasks[name] = (asyncio.create_task(coro), stop)

    async def stop(self, *names: str) -> None:
        for name in names or tuple(self.tasks):
            task, stop = self.tasks.pop(name)
            stop.set()
            assert await asyncio.wait_for(task, timeout=30) == 0

    async def send(
        self,
        event: OrderCreated | None = None,
        *,
        value: bytes | None = None,
        event_id: str | None = "auto",
        key: str | None = None,
    ) -> str:
        """Produce one record; returns its event id. ``value`` overrides the event's bytes."""
        event = event or order_event()
        if event_id == "auto":
            event_id = uuid.uuid4().hex
        await self.producer.send_and_wait(
            self.topic,
            key=(key or event.order_id).encode(),
            value=value if value is not None else event.to_json().encode(),
            headers=event_headers(event_id, event.order_id),
        )
        return event_id or ""

    async def send_cancel(
        self, event: OrderCancelled, *, event_id: str | None = None, version: int = 2
    ) -> str:
        """Produce one ``OrderCancelled`` record on the private cancel topic; returns its id."""
        event_id = event_id or uuid.uuid4().hex
        await self.producer.send_and_wait(
            self.cancelled_topic,
            key=event.order_id.encode(),
            value=event.to_json().encode(),
            headers=event_headers(
                event_id, event.order_id, event_type=EVENT_ORDER_CANCELLED, version=version
            ),
        )
        return event_id

    async def send_verdict(
        self,
        event: StockReserved | StockRejected,
        *,
        event_id: str | None = None,
        value: bytes | None = None,
    ) -> str:
        """Produce inventory's verdict as its relay would (value the event's JSON, key the order
        id, the contract's headers, version 1 of the reservation) on the private verdict topic;
        returns its event id. ``value`` overrides the event's bytes."""
        event_id = event_id or uuid.uuid4().hex
        rejected = isinstance(event, StockRejected)
        await self.producer.send_and_wait(
            self.rejected_topic if rejected else self.reserved_topic,
            key=event.order_id.encode(),
            value=value if value is not None else event.to_json().encode(),
            headers=event_headers(
                event_id,
                event.order_id,
                event_type=EVENT_STOCK_REJECTED if rejected else EVENT_STOCK_RESERVED,
                aggregate_type=AGGREGATE_RESERVATION,
            ),
        )
        return event_id

    async def dead_letter(
        self,
        event: OrderCreated,
        event_id: str,
        *,
        group: str,
        target: str | None = None,
        reason: str = "RuntimeError: a bug since fixed",
    ) -> None:
        """What ``group`` writes to the creation topic's DLQ when it gives up on ``event`` (read
        from ``target``, by default the creation topic) after three attempts."""
        record = build_dlq_record(
            topic=target or self.topic,
            partition=0,
            offset=42,
            key=event.order_id.encode(),
            value=event.to_json().encode(),
            headers=event_headers(event_id, event.order_id),
            reason=reason,
            retry_count=2,
            consumer_group=group,
        )
        await send_to_dlq(self.producer, self.dlq_topic, record)

    async def reservations(self, order_id: str) -> list[dict[str, Any]]:
        cursor = self.mongo[self.database][RESERVATIONS].find({"orderId": order_id})
        return [doc async for doc in cursor]

    async def available(self, sku: str) -> int:
        doc = await self.mongo[self.database][STOCK].find_one({"sku": sku})
        assert doc is not None
        return int(doc["available"])

    def emails_for(self, event_id: str) -> list[Message]:
        """The .eml files whose Message-ID belongs to ``event_id``."""
        found = []
        for path in sorted(Path(self.stack.config.smtp_dir).glob("*.eml")):
            data = path.read_bytes()
            if event_id.encode() in data:
                message = message_from_bytes(data)
                if event_id in (message["Message-ID"] or ""):
                    found.append(message)
        return found

    def subjects_for(self, order_id: str) -> list[str]:
        """Subjects of the emails about ``order_id``, in the order the sink received them (its
        file names start with a nanosecond timestamp)."""
        subjects = []
        for path in sorted(Path(self.stack.config.smtp_dir).glob("*.eml")):
            message = message_from_bytes(path.read_bytes())
            subject = str(message["Subject"] or "")
            if order_id in subject:
                subjects.append(subject)
        return subjects

    async def dlq(
        self, group: str | None = None, *, source_topic: str | None = None
    ) -> list[StoredDlqRecord]:
        """The DLQ records of ``source_topic`` (default: the creation topic)."""
        dlq_topic = dlq_topic_for(source_topic or self.topic)
        records = await read_dlq(self.stack.config.kafka_bootstrap, dlq_topic)
        return [r for r in records if group is None or r.consumer_group == group]


@pytest.fixture
async def pipeline(stack: Stack) -> AsyncIterator[Pipeline]:
    suffix = uuid.uuid4().hex[:10]
    topic = f"test.consumers.{suffix}"
    cancelled_topic = f"test.consumers.cancelled.{suffix}"
    reserved_topic = f"test.consumers.reserved.{suffix}"
    rejected_topic = f"test.consumers.rejected.{suffix}"
    sources = [topic, cancelled_topic, reserved_topic, rejected_topic]
    c = stack.config
    await ensure_topics(
        c.kafka_bootstrap,
        [name for source in sources for name in (source, dlq_topic_for(source))],
        TOPIC_PARTITIONS,
    )
    producer = make_producer(c.kafka_bootstrap)
    await producer.start()
    mongo = make_mongo_client(c.mongo_uri, 5.0, "consumer-tests")
    redis = make_redis(c.redis_url)
    database = f"inventory_{suffix}"
    await ensure_indexes(mongo, database)
    await mongo[database][STOCK].insert_many(
        [{"sku": f"SKU-{n}", "available": 100} for n in range(1, 4)]
    )
    p = Pipeline(
        stack,
        topic,
        cancelled_topic,
        database,
        f"inventory-{suffix}",
        f"email-{suffix}",
        producer,
        mongo,
        redis,
        reserved_topic=reserved_topic,
        rejected_topic=rejected_topic,
    )
    try:
        yield p
    finally:
        for _, stop in p.tasks.values():
            stop.set()
        try:
            # A consumer that crashed during the test fails it here, by name.
            await finish_service_tasks({n: t for n, (t, _) in p.tasks.items()}, timeout=30)
        finally:
            await producer.stop()
            await mongo.drop_database(database)
            await mongo.close()
            await redis.aclose()


def poison_values(event: OrderCreated) -> Sequence[tuple[str, bytes, str]]:
    """(kind, value, expected reason fragment) for every poison kind but the missing header."""
    good = json.loads(event.to_json())
    missing = {k: v for k, v in good.items() if k != "customerEmail"}
    ill_typed = {**good, "items": [{**good["items"][0], "quantity": "two"}]}
    return [
        ("not JSON", b"\x00not json", "not JSON"),
        ("not an object", b'["an", "array"]', "not an object"),
        ("missing field", json.dumps(missing).encode(), "customerEmail"),
        ("ill-typed field", json.dumps(ill_typed).encode(), "quantity"),
        (
            "unknown schemaVersion",
            json.dumps({**good, "schemaVersion": 99}).encode(),
            "unknown schemaVersion",
        ),
    ]
