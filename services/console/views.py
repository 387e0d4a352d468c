"""What the console shows, read from the running system: pure reads, no side effects.

Every read has a deadline (the Mongo client's timeout, Kafka's request timeout, 2 s per HTTP
probe): a component that is down shows as down, it never hangs a page.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from bson import ObjectId
from bson.errors import InvalidId

from services.console.settings import ConsoleSettings
from services.relay.lease import LEASE_COLLECTION, lease_id
from services.relay.members import MEMBERS_COLLECTION, live_members, slot_count_votes
from services.relay.share import dissenters
from shared.contracts import TOPIC_PARTITIONS, Header, OutboxStatus, topic_for_event_type
from shared.dlq import StoredDlqRecord
from shared.kafka import REQUEST_TIMEOUT_MS
from shared.mongo import MongoClient
from shared.outbox import OUTBOX_COLLECTION, OutboxField
from shared.redaction import redact

PROBE_TIMEOUT_SECONDS = 2.0
# The relay's and the order API's collections, named by their owners.
OUTBOX = OUTBOX_COLLECTION
ORDERS = "orders"
RESERVATIONS = "reservations"
# A page of Failed events; more than this is a systemic problem the count already shows.
FAILED_PAGE = 200


@dataclass(frozen=True)
class Readiness:
    name: str
    url: str
    ready: bool
    detail: str


def _lease_live(owner: str | None, expires_at: datetime | None) -> bool:
    """A lease document names a holder whose lease has not expired yet."""
    return owner is not None and expires_at is not None and expires_at > datetime.now(UTC)


@dataclass(frozen=True)
class Leader:
    owner: str | None
    epoch: int | None
    expires_at: datetime | None

    @property
    def held(self) -> bool:
        return _lease_live(self.owner, self.expires_at)


@dataclass(frozen=True)
class SlotOwner:
    """One relay slot: its lease holder (none when nobody took it or the lease expired) and
    its Pending backlog."""

    slot: int
    owner: str | None
    epoch: int | None
    expires_at: datetime | None
    pending: int

    @property
    def held(self) -> bool:
        return _lease_live(self.owner, self.expires_at)


@dataclass(frozen=True)
class OutboxCounts:
    pending: int
    failed: int
    oldest_pending_age_seconds: float


@dataclass(frozen=True)
class GroupLag:
    group: str
    partitions: dict[int, int]  # partition -> lag (records)

    @property
    def total(self) -> int:
        return sum(self.partitions.values())


@dataclass
class DlqGroup:
    """DLQ records of one consumer group with one cause."""

    group: str
    cause: str
    records: list[StoredDlqRecord] = field(default_factory=list)


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# ---------------------------------------------------------------- readiness and the relay lease


async def readiness(settings: ConsoleSettings) -> list[Readiness]:
    targets = [("order", settings.order_url)]
    targets += [
        (f"relay-{i + 1}" if len(settings.relay_urls) > 1 else "relay", url)
        for i, url in enumerate(settings.relay_urls)
    ]
    targets += [("inventory", settings.inventory_url), ("email", settings.email_url)]
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_SECONDS) as client:
        return list(await asyncio.gather(*(_probe(client, n, u) for n, u in targets)))


async def _probe(client: httpx.AsyncClient, name: str, url: str) -> Readiness:
    try:
        answer = await client.get(f"{url}/readyz")
    except httpx.HTTPError as exc:
        return Readiness(name, redact(url), False, redact(type(exc).__name__ + ": " + str(exc)))
    try:
        checks = answer.json().get("checks", {})
        failing = ", ".join(sorted(k for k, ok in checks.items() if not ok))
    except ValueError:
        failing = ""
    detail = "ready" if answer.status_code == 200 else f"not ready: {failing or answer.status_code}"
    return Readiness(name, redact(url), answer.status_code == 200, redact(detail))


async def leader(client: MongoClient, settings: ConsoleSettings) -> Leader:
    # The lease document of slot 0, not whichever comes first: the collection also holds the
    # fences and the other slots' leases (each slot's holder: relay_members, relay_owned_slots).
    doc = await client[settings.orders_database][LEASE_COLLECTION].find_one({"_id": lease_id(0)})
    if doc is None:
        return Leader(None, None, None)
    return Leader(doc.get("owner"), doc.get("epoch"), _utc(doc.get("expiresAt")))


async def slot_owners(client: MongoClient, settings: ConsoleSettings) -> list[SlotOwner]:
    """Every slot of ``RELAY_SLOTS``, in order, with its lease holder and Pending count.

    The leases are read by id (the collection also holds the fences); Pending events are counted
    per ``slot`` field. A slot with Pending events and no holder is what RelaySlotWithoutOwner
    alerts on: nobody publishes its orders' events.
    """
    db = client[settings.orders_database]
    slots = range(settings.relay_slots)
    leases = {
        doc["_id"]: doc
        async for doc in db[LEASE_COLLECTION].find({"_id": {"$in": [lease_id(s) for s in slots]}})
    }
    pending: dict[Any, int] = {}
    rows = await db[OUTBOX].aggregate(
        [
            {"$match": {OutboxField.STATUS: OutboxStatus.PENDING.value}},
            {"$group": {"_id": f"${OutboxField.SLOT}", "count": {"$sum": 1}}},
        ]
    )
    async for row in rows:
        pending[row["_id"]] = int(row["count"])
    owners = []
    for slot in slots:
        doc = leases.get(lease_id(slot), {})
        owners.append(
            SlotOwner(
                slot,
                doc.get("owner"),
                doc.get("epoch"),
                _utc(doc.get("expiresAt")),
                pending.get(slot, 0),
            )
        )
    return owners


def owner_summary(owners: list[SlotOwner]) -> dict[str, int]:
    """Slots held per relay instance (the expired leases left out), biggest holder first."""
    counts: dict[str, int] = defaultdict(int)
    for owner in owners:
        if owner.held and owner.owner is not None:
            counts[owner.owner] += 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


async def slot_count_dissenters(client: MongoClient, settings: ConsoleSettings) -> dict[str, int]:
    """Live relays whose RELAY_SLOTS is not the one the running relays use, with their value:
    each refuses to take or give up a slot until it is restarted with the right one."""
    members = await live_members(client[settings.orders_database][MEMBERS_COLLECTION])
    return dissenters(slot_count_votes(members)) if members else {}


# ---------------------------------------------------------------- the outbox


async def outbox_counts(client: MongoClient, settings: ConsoleSettings) -> OutboxCounts:
    outbox = client[settings.orders_database][OUTBOX]
    pending = await outbox.count_documents({"status": OutboxStatus.PENDING.value})
    failed = await outbox.count_documents({"status": OutboxStatus.FAILED.value})
    oldest = await outbox.find_one(
        {"status": OutboxStatus.PENDING.value}, {"createdAt": 1}, sort=[("createdAt", 1)]
    )
    created = _utc(oldest.get("createdAt")) if oldest else None
    age = (datetime.now(UTC) - created).total_seconds() if created else 0.0
    return OutboxCounts(pending, failed, max(0.0, age))


async def published_since(client: MongoClient, settings: ConsoleSettings, since: datetime) -> int:
    outbox = client[settings.orders_database][OUTBOX]
    return await outbox.count_documents(
        {"status": OutboxStatus.PUBLISHED.value, "publishedAt": {"$gte": since}}
    )


async def failed_events(client: MongoClient, settings: ConsoleSettings) -> list[dict[str, Any]]:
    """Failed events, oldest first (the order the relay would publish them in)."""
    cursor = (
        client[settings.orders_database][OUTBOX]
        .find({"status": OutboxStatus.FAILED.value}, {"payload": 0})
        .sort("createdAt", 1)
        .limit(FAILED_PAGE)
    )
    return [_event_view(doc) async for doc in cursor]


def _event_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "aggregateId": doc.get("aggregateId"),
        "aggregateVersion": doc.get("aggregateVersion"),
        "eventType": doc.get("eventType"),
        "status": doc.get("status"),
        "attempts": doc.get("attempts", 0),
        "createdAt": _utc(doc.get("createdAt")),
        "publishedAt": _utc(doc.get("publishedAt")),
        "lastError": redact(str(doc["lastError"])) if doc.get("lastError") else None,
        "traceparent": doc.get("traceparent"),
        "kafka": kafka_position(doc),
    }


def kafka_position(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Where the relay recorded Kafka put this event (topic, partition, offset), or None for an
    event not published, or published before the relay recorded it."""
    f = OutboxField
    if doc.get(f.KAFKA_OFFSET) is None:
        return None
    return {
        "topic": doc.get(f.KAFKA_TOPIC),
        "partition": doc.get(f.KAFKA_PARTITION),
        "offset": doc.get(f.KAFKA_OFFSET),
    }


# ---------------------------------------------------------------- Kafka: lag and dead letters


async def group_lags(settings: ConsoleSettings, topic: str) -> list[GroupLag]:
    """Each group's lag per partition: end offset minus the committed offset."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=REQUEST_TIMEOUT_MS
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=REQUEST_TIMEOUT_MS + 30_000,
    )
    await admin.start()
    try:
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(TOPIC_PARTITIONS)]
            ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
            lags = []
            for group in settings.groups:
                committed = await admin.list_consumer_group_offsets(group)
                lags.append(
                    GroupLag(
                        group,
                        {tp.partition: max(0, ends[tp] - _committed(committed, tp)) for tp in tps},
                    )
                )
            return lags
        finally:
            await consumer.stop()
    finally:
        await admin.close()


def _committed(committed: dict[TopicPartition, Any], tp: TopicPartition) -> int:
    meta = committed.get(tp)
    return max(0, int(meta.offset)) if meta is not None else 0


# Digits, hex ids and quoted values vary per record; what is left is the cause's shape.
_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|\b[0-9a-f]{24}\b|\b\d+(\.\d+)?\b")


def cause_of(record: StoredDlqRecord) -> str:
    """``ExceptionType: message pattern`` (numbers, ids and quoted values as ``…``)."""
    reason = record.headers.get(Header.FAILURE_REASON, "") or "(no failureReason header)"
    return redact(_VARIABLE.sub("…", reason))[:200]


def group_dead_letters(records: list[StoredDlqRecord]) -> list[DlqGroup]:
    """Records grouped by consumer group and cause, biggest group first."""
    groups: dict[tuple[str, str], DlqGroup] = {}
    for record in records:
        key = (record.consumer_group or "(unknown group)", cause_of(record))
        groups.setdefault(key, DlqGroup(*key)).records.append(record)
    return sorted(groups.values(), key=lambda g: (-len(g.records), g.group, g.cause))


def dlq_counts(records: list[StoredDlqRecord]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record.consumer_group or "(unknown group)"] += 1
    return dict(counts)


def record_view(record: StoredDlqRecord) -> dict[str, Any]:
    """A DLQ record as text for a page or JSON: never interpreted, credentials masked."""
    return {
        "ref": record.ref,
        "partition": record.partition,
        "offset": record.offset,
        "group": record.consumer_group,
        "cause": cause_of(record),
        "key": redact(_text(record.key)),
        "value": redact(_text(record.value)),
        "headers": {name: redact(value) for name, value in record.headers.items()},
    }


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", "replace")


# ---------------------------------------------------------------- one order's timeline


@dataclass(frozen=True)
class Step:
    at: datetime | None
    what: str
    detail: str


def partition_of(key: str, partitions: int = TOPIC_PARTITIONS) -> int:
    """The partition the relay's producer picks for ``key`` (Kafka's murmur2 partitioner)."""
    chosen: int = DefaultPartitioner()(
        key.encode(), list(range(partitions)), list(range(partitions))
    )
    return chosen


async def timeline(
    client: MongoClient, settings: ConsoleSettings, order_id: str
) -> tuple[dict[str, Any] | None, list[Step], list[str]]:
    """The order (with its outbox events: status and Kafka position), its steps in time order,
    and the trace ids of its events."""
    try:
        oid = ObjectId(order_id)
    except (InvalidId, TypeError):
        return None, [], []
    db = client[settings.orders_database]
    order = await db[ORDERS].find_one({"_id": oid})
    if order is None:
        return None, [], []
    steps = [Step(_utc(order.get("createdAt")), "order created", f"status {order.get('status')}")]
    traces: list[str] = []
    events: list[dict[str, Any]] = []
    async for doc in db[OUTBOX].find({"aggregateId": order_id}).sort("aggregateVersion", 1):
        event = _event_view(doc)
        events.append(event)
        steps.append(
            Step(event["createdAt"], f"outbox {event['eventType']} written", f"event {event['id']}")
        )
        if event["status"] == OutboxStatus.PUBLISHED.value:
            steps.append(Step(event["publishedAt"], "published to Kafka", _where(event, order_id)))
        else:
            detail = f"status {event['status']}, {event['attempts']} attempt(s)"
            if event["lastError"]:
                detail += f"; last error: {event['lastError']}"
            steps.append(Step(None, f"not published yet ({event['status']})", detail))
        if event["traceparent"]:
            parts = str(event["traceparent"]).split("-")
            if len(parts) == 4:
                traces.append(parts[1])
    reservation = await client[settings.inventory_database][RESERVATIONS].find_one(
        {"orderId": order_id}
    )
    if reservation is not None:
        reason = f" ({reservation.get('reason')})" if reservation.get("reason") else ""
        steps.append(
            Step(
                _utc(reservation.get("createdAt")),
                f"stock {reservation.get('status')}",
                f"inventory, event {reservation.get('eventId')}{reason}",
            )
        )
    steps += await _emails(settings, order_id)
    steps.sort(key=lambda s: (s.at is None, s.at or datetime.min.replace(tzinfo=UTC)))
    summary = {
        "id": order_id,
        "status": order.get("status"),
        "userId": order.get("userId"),
        "total": str(order.get("total")),
        "createdAt": _utc(order.get("createdAt")),
        "events": events,
    }
    return summary, steps, traces


def _where(event: dict[str, Any], order_id: str) -> str:
    """The Kafka position of a published event, as the relay recorded it. An event published
    before the relay recorded positions shows the topic and partition its type and key imply."""
    kafka = event["kafka"]
    if kafka is not None:
        return (
            f"topic {kafka['topic']}, partition {kafka['partition']}, offset {kafka['offset']} "
            f"(key {order_id})"
        )
    try:
        topic = topic_for_event_type(str(event["eventType"]))
    except ValueError:
        topic = "unknown topic"
    return (
        f"topic {topic}, partition {partition_of(order_id)} (key {order_id}); offset not "
        "recorded (published before the relay recorded offsets)"
    )


async def _emails(settings: ConsoleSettings, order_id: str) -> list[Step]:
    subject = f"Order {order_id} confirmed"
    if settings.smtp_dir is not None:
        return await asyncio.to_thread(_emails_in_dir, settings.smtp_dir, subject)
    if settings.mailpit_url:
        return await _emails_in_mailpit(settings.mailpit_url, subject)
    return []


def _emails_in_dir(directory: Path, subject: str) -> list[Step]:
    steps = []
    for path in sorted(directory.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message.get("Subject") != subject:
            continue
        when = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        steps.append(Step(when, "email sent", f"to {message.get('To')} ({path.name})"))
    return steps


async def _emails_in_mailpit(url: str, subject: str) -> list[Step]:
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_SECONDS) as client:
        try:
            answer = await client.get(
                f"{url}/api/v1/search", params={"query": f'subject:"{subject}"'}
            )
            messages = answer.json().get("messages", [])
        except (httpx.HTTPError, ValueError):
            return [Step(None, "emails unknown", "Mailpit did not answer")]
    return [
        Step(
            datetime.fromisoformat(m["Created"].replace("Z", "+00:00"))
            if m.get("Created")
            else None,
            "email sent",
            f"to {', '.join(t.get('Address', '') for t in m.get('To', []))}",
        )
        for m in messages
    ]
