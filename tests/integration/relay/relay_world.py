"""Helpers for the relay's integration tests against the embedded stack.

Each test gets its own database (the relay's ``RELAY_DATABASE``) and its own Kafka
``transactional_id``, so relays of different tests never fence each other; events go to the
real ``order.created`` topic, and a test reads back only the records of its own aggregates,
starting from the topic's end offsets captured when the test began.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from bson import ObjectId
from pymongo import monitoring

from services.relay.main import Relay
from services.relay.settings import RelaySettings
from shared.contracts import (
    AGGREGATE_ORDER,
    EVENT_ORDER_CREATED,
    ORDER_CREATED_TOPIC,
    TOPIC_PARTITIONS,
    OutboxStatus,
)
from shared.events import EventItem, OrderCreated
from shared.kafka import decode_headers
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from shared.slots import DEFAULT_RELAY_SLOTS, slot_for
from stack import Stack
from tests.waiting import wait_until


def payload_for(order_id: str, *, padding: int = 0) -> str:
    """An OrderCreated payload; ``padding`` extra characters in the user id make it larger."""
    return OrderCreated.model_validate(
        {
            "orderId": order_id,
            "userId": "user-" + "x" * padding,
            "customerEmail": "buyer@example.com",
            "total": "25.00",
            "items": [
                EventItem.model_validate(
                    {"sku": "SKU-1", "quantity": 2, "unitPrice": Decimal("12.50")}
                ).model_dump(by_alias=True)
            ],
            "createdAt": datetime.now(UTC),
        }
    ).to_json()


@dataclass
class Record:
    key: str
    event_id: str
    version: int
    partition: int
    offset: int


@dataclass
class RelayWorld:
    stack: Stack
    mongo: MongoClient
    database: str
    transactional_id: str
    start_offsets: dict[TopicPartition, int]
    instances: list[str] = field(default_factory=list)
    # RELAY_SLOTS of this test's relays and of the documents it writes (as the order API does).
    # A test of the classic leader and standby sets 1: one slot, one lease, one publisher.
    slots: int = DEFAULT_RELAY_SLOTS

    @property
    def db(self) -> Any:
        return self.mongo[self.database]

    @property
    def outbox(self) -> Any:
        return self.db[OUTBOX_COLLECTION]

    def settings(self, **overrides: Any) -> RelaySettings:
        values: dict[str, Any] = {
            "mongo_uri": self.stack.config.mongo_uri,
            "kafka_bootstrap_servers": self.stack.config.kafka_bootstrap,
            "database": self.database,
            "transactional_id": self.transactional_id,
            "port": 0,
            "lease_ttl_seconds": 3.0,
            "lease_renew_seconds": 1.0,
            "sweep_interval_seconds": 0.5,
            "backoff_max_seconds": 1.0,
            "metrics_interval_seconds": 0.5,
            "relay_slots": self.slots,
            # The relay and the order API (this test) read one host clock.
            "clock_skew_seconds": 0.0,
        }
        values.update(overrides)
        return RelaySettings(**values)

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment of a relay process of this test (short lease, own db and txn id)."""
        env = {
            "RELAY_DATABASE": self.database,
            "RELAY_TRANSACTIONAL_ID": self.transactional_id,
            "RELAY_LEASE_TTL_SECONDS": "3",
            "RELAY_LEASE_RENEW_SECONDS": "1",
            "RELAY_SWEEP_INTERVAL_SECONDS": "0.5",
            "RELAY_BACKOFF_MAX_SECONDS": "1",
            "RELAY_SLOTS": str(self.slots),
        }
        env.update(overrides)
        return env

    async def start_process(self, name: str, **env: str) -> str:
        instance = f"relay-{name}-{self.database[-6:]}"
        if instance not in self.instances:
            self.instances.append(instance)
        await asyncio.to_thread(
            self.stack.start,
            "relay",
            self.env(RELAY_INSTANCE_ID=instance, **env),
            instance=instance,
        )
        return instance

    async def insert(
        self,
        aggregate_id: str,
        version: int,
        *,
        payload: str | None = None,
        created_at: datetime | None = None,
    ) -> ObjectId:
        event_id = ObjectId()
        await self.outbox.insert_one(
            self.event_doc(event_id, aggregate_id, version, payload, created_at)
        )
        return event_id

    def event_doc(
        self,
        event_id: ObjectId,
        aggregate_id: str,
        version: int,
        payload: str | None = None,
        created_at: datetime | None = None,
    ) -> dict[str, Any]:
        return {
            "_id": event_id,
            "aggregateType": AGGREGATE_ORDER,
            "aggregateId": aggregate_id,
            "aggregateVersion": version,
            "eventType": EVENT_ORDER_CREATED,
            "payload": payload if payload is not None else payload_for(aggregate_id),
            "status": OutboxStatus.PENDING.value,
            "attempts": 0,
            "createdAt": created_at or datetime.now(UTC),
            "publishedAt": None,
            "lastError": None,
            "traceparent": None,
            # Stored at insert, as the order API does (tests of events without one drop it).
            "slot": slot_for(aggregate_id, self.slots),
        }

    async def status_of(self, event_id: ObjectId) -> str | None:
        doc = await self.outbox.find_one({"_id": event_id}, {"status": 1})
        return None if doc is None else str(doc["status"])

    async def wait_published(self, event_ids: Iterable[ObjectId], within: float) -> None:
        ids = list(event_ids)

        async def all_published() -> bool:
            published = await self.outbox.count_documents(
                {"_id": {"$in": ids}, "status": OutboxStatus.PUBLISHED.value}
            )
            return bool(published == len(ids))

        await wait_until(
            all_published, timeout=within, interval=0.1, message=f"{len(ids)} events Published"
        )

    async def read_records(
        self, aggregate_ids: Iterable[str], *, at_least: int, within: float = 30.0
    ) -> list[Record]:
        """Records of ``aggregate_ids`` published since the test began (read_committed)."""
        wanted = set(aggregate_ids)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.stack.config.kafka_bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await consumer.start()
        records: list[Record] = []
        try:
            consumer.assign(list(self.start_offsets))
            for tp, offset in self.start_offsets.items():
                consumer.seek(tp, offset)

            def collect(batches: dict[Any, list[Any]]) -> None:
                for tp, messages in batches.items():
                    for m in messages:
                        key = m.key.decode() if m.key else ""
                        if key in wanted:
                            headers = decode_headers(m.headers)
                            version = int(headers["aggregateVersion"])
                            event_id = headers["idempotencyKey"]
                            records.append(Record(key, event_id, version, tp.partition, m.offset))

            async def enough() -> bool:
                collect(await consumer.getmany(timeout_ms=200, max_records=5000))
                return len(records) >= at_least

            await wait_until(
                enough,
                timeout=within,
                interval=0.01,
                message=f"at least {at_least} records on {ORDER_CREATED_TOPIC}",
            )
            # Whatever else is already there (duplicates) is part of the answer too.
            collect(await consumer.getmany(timeout_ms=500, max_records=5000))
        finally:
            await consumer.stop()
        return records


async def end_offsets(
    bootstrap: str, topics: Sequence[str] = (ORDER_CREATED_TOPIC,)
) -> dict[TopicPartition, int]:
    """The current end of every partition of ``topics`` (``order.created``): where a test's
    records begin."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(TOPIC_PARTITIONS)]
        # Assigned before stop(): aiokafka's group-less coordinator dislikes stopping unassigned.
        consumer.assign(tps)
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def read_keyed(
    bootstrap: str,
    start: dict[TopicPartition, int],
    keys: set[str],
    count: int,
    within: float = 30.0,
) -> list[Any]:
    """The records (aiokafka ``ConsumerRecord``) of ``keys`` on the partitions of ``start``
    since its offsets (read_committed), once at least ``count`` of them are there."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)

        async def enough() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            records.extend(
                m for ms in batch.values() for m in ms if m.key and m.key.decode() in keys
            )
            return len(records) >= count

        await wait_until(enough, timeout=within, interval=0.01, message=f"{count} records")
    finally:
        await consumer.stop()
    return records


@contextlib.asynccontextmanager
async def running_relay(
    settings: RelaySettings, event_listeners: Sequence[monitoring.CommandListener] = ()
) -> AsyncIterator[Relay]:
    """A relay in this process until the block ends (then a clean stop, as on SIGTERM);
    ``event_listeners`` see every command it sends to MongoDB."""
    client = make_mongo_client(
        settings.mongo_uri,
        settings.mongo_timeout_seconds,
        "relay-test",
        event_listeners=event_listeners,
    )
    relay = Relay(settings, client)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await client.close()


def by_key(records: Iterable[Record]) -> dict[str, list[int]]:
    """Versions per aggregate in the order they sit in the topic (one key, one partition)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for r in records:
        out.setdefault(r.key, []).append((r.offset, r.version))
    return {key: [v for _, v in sorted(pairs)] for key, pairs in out.items()}


def first_occurrences(versions: list[int]) -> list[int]:
    """Versions with redeliveries removed, keeping the first time each appeared."""
    seen: set[int] = set()
    return [v for v in versions if not (v in seen or seen.add(v))]  # type: ignore[func-returns-value]
