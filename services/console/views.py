"""What the console shows, read from the running system: pure reads, no side effects.

Every read has a deadline (the Mongo client's timeout, Kafka's request timeout, 2 s per HTTP
probe): a component that is down shows as down, it never hangs a page.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka.partitioner import DefaultPartitioner
from redis.exceptions import RedisError

from services.console.settings import ConsoleSettings
from services.email.handlers import SERVICE as EMAIL_SERVICE
from services.email.models import (
    CANCELLATION_KIND,
    CONFIRMATION_KIND,
    LEGACY_CONFIRMATION_KIND,
    REJECTION_KIND,
    message_id_for,
)
from services.email.order_state import OrderState
from services.relay.lease import LEASE_COLLECTION, lease_id
from services.relay.members import MEMBERS_COLLECTION, live_members, slot_count_votes
from services.relay.share import dissenters
from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RESERVED,
    TOPIC_PARTITIONS,
    Header,
    OutboxStatus,
    order_state_key,
    topic_for_event_type,
)
from shared.dlq import StoredDlqRecord
from shared.identifiers import parse_object_id
from shared.lag import GroupLag
from shared.lag import group_lags as shared_group_lags
from shared.mongo import MongoClient
from shared.outbox import OUTBOX_COLLECTION, OutboxField
from shared.redaction import redact
from shared.redis import make_redis
from stack.observe import Inbox

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


@dataclass
class DlqGroup:
    """Records of one dead-letter topic, from one consumer group, with one cause."""

    topic: str
    group: str
    cause: str
    records: list[StoredDlqRecord] = field(default_factory=list)


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# ---------------------------------------------------------------- readiness and the relay lease


def readiness_targets(settings: ConsoleSettings) -> list[tuple[str, str]]:
    """(name, base URL) of every service, in the order an order travels: the API, its outbox's
    relays, inventory, inventory's outbox's relays, the order's verdict consumer, email."""
    targets = [("order", settings.order_url)]
    targets += _numbered("relay", settings.relay_urls)
    targets += [("inventory", settings.inventory_url)]
    targets += _numbered("inventory-relay", settings.inventory_relay_urls)
    targets += [("order-verdicts", settings.order_verdicts_url), ("email", settings.email_url)]
    return targets


async def readiness(settings: ConsoleSettings) -> list[Readiness]:
    targets = readiness_targets(settings)
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_SECONDS) as client:
        return list(await asyncio.gather(*(_probe(client, n, u) for n, u in targets)))


def _numbered(name: str, urls: tuple[str, ...]) -> list[tuple[str, str]]:
    """``name`` for one instance; ``name-1``, ``name-2`` ... for several."""
    if len(urls) == 1:
        return [(name, urls[0])]
    return [(f"{name}-{i + 1}", url) for i, url in enumerate(urls)]


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


async def group_lags(settings: ConsoleSettings) -> list[GroupLag]:
    """Each group's lag on each of its topics: records it still has to read (see
    :mod:`shared.lag`: a caught-up group shows 0 although transaction markers follow its
    committed offset); a group's topics are those ``group_topics`` names for it."""
    lags = await shared_group_lags(
        settings.kafka_bootstrap_servers, settings.groups, settings.topics
    )
    return read_topics_only(lags, settings)


def read_topics_only(lags: list[GroupLag], settings: ConsoleSettings) -> list[GroupLag]:
    """The lags of each group on the topics it reads: on any other it would be every record."""
    return [
        lag for lag in lags if lag.topic in settings.group_topics.get(lag.group, settings.topics)
    ]


# Digits, hex ids and quoted values vary per record; what is left is the cause's shape.
_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|\b[0-9a-f]{24}\b|\b\d+(\.\d+)?\b")


def cause_of(record: StoredDlqRecord) -> str:
    """``ExceptionType: message pattern`` (numbers, ids and quoted values as ``…``)."""
    reason = record.headers.get(Header.FAILURE_REASON, "") or "(no failureReason header)"
    return redact(_VARIABLE.sub("…", reason))[:200]


def _group_of(record: StoredDlqRecord) -> str:
    return record.consumer_group or "(unknown group)"


def group_dead_letters(records: list[StoredDlqRecord]) -> list[DlqGroup]:
    """Records grouped by dead-letter topic, consumer group and cause, biggest group first."""
    groups: dict[tuple[str, str, str], DlqGroup] = {}
    for record in records:
        key = (record.topic, _group_of(record), cause_of(record))
        groups.setdefault(key, DlqGroup(*key)).records.append(record)
    return sorted(groups.values(), key=lambda g: (-len(g.records), g.topic, g.group, g.cause))


def dlq_counts(records: list[StoredDlqRecord]) -> dict[str, dict[str, int]]:
    """Dead-letter topic -> consumer group -> records (topics without records left out)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in records:
        counts[record.topic][_group_of(record)] += 1
    return {topic: dict(groups) for topic, groups in sorted(counts.items())}


def record_view(record: StoredDlqRecord) -> dict[str, Any]:
    """A DLQ record as text for a page or JSON: never interpreted, credentials masked."""
    return {
        "topic": record.topic,
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


@dataclass(frozen=True)
class Mail:
    """One message the mailbox holds (the SMTP sink's files, or Mailpit)."""

    message_id: str
    received_at: datetime | None
    recipient: str


# Which email each event type sends, and how the timeline names it once sent. An order placed
# before inventory announced its verdict was confirmed on its OrderCreated, under the old kind.
_EMAIL_OF_EVENT = {
    EVENT_STOCK_RESERVED: (CONFIRMATION_KIND, "confirmation sent"),
    EVENT_STOCK_REJECTED: (REJECTION_KIND, "rejection notice sent"),
    EVENT_ORDER_CANCELLED: (CANCELLATION_KIND, "cancellation notice sent"),
    EVENT_ORDER_CREATED: (LEGACY_CONFIRMATION_KIND, "confirmation sent"),
}


# The email service's per-order state (services/email/order_state.py) names the last email
# that left: the event types it may have been sent for, today's first.
_RECORDED_SEND = {
    OrderState.CONFIRMED.value: (EVENT_STOCK_RESERVED, EVENT_ORDER_CREATED),
    OrderState.REJECTION_SENT.value: (EVENT_STOCK_REJECTED,),
    OrderState.CANCELLATION_SENT.value: (EVENT_ORDER_CANCELLED,),
}


async def email_state(settings: ConsoleSettings, order_id: str) -> str | None:
    """What the email service records about the order (``confirmed``, ``cancellation_sent``...),
    or None when it has no record; an in-flight ``confirming|<claim>`` reads ``confirming``."""
    redis = make_redis(settings.redis_url)
    try:
        raw = await redis.get(order_state_key(EMAIL_SERVICE, order_id))
    finally:
        await redis.aclose()
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text.split("|", 1)[0]


def partition_of(key: str, partitions: int = TOPIC_PARTITIONS) -> int:
    """The partition the relay's producer picks for ``key`` (Kafka's murmur2 partitioner)."""
    chosen: int = DefaultPartitioner()(
        key.encode(), list(range(partitions)), list(range(partitions))
    )
    return chosen


async def timeline(
    client: MongoClient, settings: ConsoleSettings, order_id: str
) -> tuple[dict[str, Any] | None, list[Step], list[str]]:
    """The order (with its outbox events and inventory's: status and Kafka position), its steps
    in time order, and the trace ids of its events. An order from before the state machine (no
    ``history``) or before inventory had an outbox simply has fewer steps."""
    oid = parse_object_id(order_id)
    if oid is None:
        return None, [], []
    # Events, reservation and mail are keyed by the stored spelling, whatever case was typed.
    order_id = str(oid)
    db = client[settings.orders_database]
    order = await db[ORDERS].find_one({"_id": oid})
    if order is None:
        return None, [], []
    events = [
        _event_view(doc)
        async for doc in db[OUTBOX].find({"aggregateId": order_id}).sort("aggregateVersion", 1)
    ]
    inventory = client[settings.inventory_database]
    # Inventory's verdict and release: the reservation is the order's aggregate there, keyed by
    # the order id (shared/contracts.py AGGREGATE_RESERVATION).
    inventory_events = [
        _event_view(doc)
        async for doc in inventory[OUTBOX]
        .find({"aggregateId": order_id}, {"payload": 0})
        .sort("aggregateVersion", 1)
    ]
    reservation = await inventory[RESERVATIONS].find_one({"orderId": order_id})
    try:
        mails, mailbox_error = await _mails(settings, order_id), None
    except MailboxUnavailable as exc:
        mails, mailbox_error = [], str(exc)
    try:
        state: str | None = await email_state(settings, order_id)
    except RedisError as exc:
        state = f"unknown (Redis: {redact(str(exc))})"
    traces = [
        parts[1]
        for event in [*events, *inventory_events]
        if event["traceparent"] and len(parts := str(event["traceparent"]).split("-")) == 4
    ]
    traces = list(dict.fromkeys(traces))  # a verdict carries its order's trace: listed once
    summary = {
        "id": order_id,
        "status": order.get("status"),
        "userId": order.get("userId"),
        "total": str(order.get("total")),
        "createdAt": _utc(order.get("createdAt")),
        "cancelledAt": _utc(order.get("cancelledAt")),
        "emailState": state,
        "events": events,
        "inventoryEvents": inventory_events,
    }
    steps = order_steps(
        order_id, order, events, reservation, mails, state, inventory_events=inventory_events
    )
    if mailbox_error is not None:
        steps.append(Step(None, "emails unknown", mailbox_error))
    return summary, steps, traces


def order_steps(
    order_id: str,
    order: dict[str, Any],
    events: list[dict[str, Any]],
    reservation: dict[str, Any] | None,
    mails: list[Mail],
    email_state: str | None = None,
    *,
    inventory_events: list[dict[str, Any]] | None = None,
) -> list[Step]:
    """Each step that happened to the order, once, at the time it was recorded, in time order.

    Built from what each service recorded when it acted (the order's ``createdAt``, its
    ``history`` of status changes, or ``cancelledAt`` for an order from before histories, each
    outbox event's ``createdAt`` and ``publishedAt`` in the order's outbox and inventory's, the
    reservation's ``createdAt`` and ``cancelledAt``, the mailbox's receive time), never from a
    current status stamped with an earlier time.
    """
    inventory_events = inventory_events or []
    steps = [Step(_utc(order.get("createdAt")), "order created", f"total {order.get('total')}")]
    history = _history_steps(order.get("history"))
    steps += history
    cancel_in_history = any(step.what == "order cancelled" for step in history)
    if order.get("cancelledAt") is not None and not cancel_in_history:
        steps.append(Step(_utc(order["cancelledAt"]), "order cancelled", "cancel accepted"))
    for event in events:
        steps += _event_steps(order_id, event)
    for event in inventory_events:
        steps += _event_steps(order_id, event, outbox="inventory outbox")
    if reservation is not None:
        steps += _inventory_steps(reservation)
    steps += _email_steps([*events, *inventory_events], mails, email_state)
    steps.sort(key=lambda s: (s.at is None, s.at or datetime.min.replace(tzinfo=UTC)))
    return steps


# The status an order starts in (services/order/lifecycle.py); "created" before the state
# machine.
_FIRST_STATUS = "placed"


def _history_steps(history: Any) -> list[Step]:
    """One step per entry of the order's ``history`` (services/order/models.py HistoryEntry:
    status after, at, cause, eventId, note): "order <status>" where the status changed, "order
    stays <status>" for a late verdict recorded without changing it. A missing or malformed
    history (an order from before it, or another writer's) gives no steps, never an error."""
    if not isinstance(history, list):
        return []
    steps = []
    status = _FIRST_STATUS
    for entry in history:
        if not isinstance(entry, dict) or not isinstance(entry.get("status"), str):
            continue
        changed = entry["status"] != status
        status = entry["status"]
        detail = f"by {entry.get('cause') or 'an unnamed cause'}"
        if entry.get("eventId"):
            detail += f", event {entry['eventId']}"
        if entry.get("note"):
            detail += f": {entry['note']}"
        what = f"order {status}" if changed else f"order stays {status}"
        steps.append(Step(_utc(entry.get("at")), what, redact(detail)))
    return steps


def _event_steps(order_id: str, event: dict[str, Any], *, outbox: str = "outbox") -> list[Step]:
    kind = event["eventType"]
    written = Step(event["createdAt"], f"{outbox} {kind} written", f"event {event['id']}")
    if event["status"] == OutboxStatus.PUBLISHED.value:
        return [written, Step(event["publishedAt"], f"{kind} published", _where(event, order_id))]
    detail = f"status {event['status']}, {event['attempts']} attempt(s)"
    if event["lastError"]:
        detail += f"; last error: {event['lastError']}"
    return [written, Step(None, f"{kind} not published yet ({event['status']})", detail)]


def _inventory_steps(reservation: dict[str, Any]) -> list[Step]:
    """What inventory did, from its reservation document (services/inventory/models.py): the
    creation's verdict at ``createdAt``, then the cancel at ``cancelledAt``. A rejection always
    records its reason, a reservation none; a cancel seen before the creation has no
    ``eventId``."""
    steps = []
    reason = reservation.get("reason")
    cancelled_at = _utc(reservation.get("cancelledAt"))
    cancel_event = reservation.get("cancelEventId")
    if reservation.get("eventId") is None:
        if cancelled_at is not None:
            steps.append(
                Step(
                    cancelled_at,
                    "cancel recorded before the order",
                    f"inventory, event {cancel_event}: nothing reserved, the creation will "
                    "reserve nothing",
                )
            )
        return steps
    verdict = "stock rejected" if reason else "stock reserved"
    detail = f"inventory, event {reservation.get('eventId')}: {_items(reservation)}"
    steps.append(
        Step(
            _utc(reservation.get("createdAt")), verdict, detail + (f" ({reason})" if reason else "")
        )
    )
    if cancelled_at is not None:
        if reason:
            steps.append(
                Step(
                    cancelled_at,
                    "cancel recorded",
                    f"inventory, event {cancel_event}: nothing had been reserved",
                )
            )
        else:
            steps.append(
                Step(
                    cancelled_at,
                    "stock released",
                    f"inventory, event {cancel_event}: {_items(reservation)} back in stock",
                )
            )
    return steps


def _items(reservation: dict[str, Any]) -> str:
    items = reservation.get("items") or []
    return ", ".join(f"{item.get('quantity')} x {item.get('sku')}" for item in items) or "no items"


def _email_steps(
    events: list[dict[str, Any]], mails: list[Mail], email_state: str | None
) -> list[Step]:
    """One step per email the order's events sent, matched by the stable Message-ID the email
    service gives it (services/email/models.py), at the time the mailbox received it. A second
    copy (the one duplicate window SMTP leaves) is the same step, noted. A send the email
    service recorded (its per-order state) that the mailbox does not show is a step without a
    time: that state keeps no time, and only the last send."""
    by_id: dict[str, list[Mail]] = defaultdict(list)
    for mail in mails:
        by_id[mail.message_id].append(mail)
    steps = []
    recorded = _RECORDED_SEND.get(email_state or "", ())
    sent_for = [(e["id"], e["eventType"]) for t in recorded for e in events if e["eventType"] == t]
    if sent_for:
        event_id, event_type = sent_for[0]
        kind, what = _EMAIL_OF_EVENT[event_type]
        if message_id_for(event_id, kind) not in by_id:
            detail = f"recorded by the email service ({email_state}); not in the mailbox"
            steps.append(Step(None, what, detail))
    for event in events:
        if event["eventType"] not in _EMAIL_OF_EVENT:
            continue
        kind, what = _EMAIL_OF_EVENT[event["eventType"]]
        message_id = message_id_for(event["id"], kind)
        copies = sorted(
            by_id.get(message_id, []),
            key=lambda m: (
                m.received_at is None,
                m.received_at or datetime.min.replace(tzinfo=UTC),
            ),
        )
        if not copies:
            continue
        detail = f"to {copies[0].recipient}, Message-ID {message_id}"
        if len(copies) > 1:
            detail += f" (received {len(copies)} times)"
        steps.append(Step(copies[0].received_at, what, detail))
    return steps


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


async def _mails(settings: ConsoleSettings, order_id: str) -> list[Mail]:
    """The mailbox's messages that may belong to the order (the caller matches Message-IDs)."""
    if settings.smtp_dir is not None:
        return await asyncio.to_thread(_mails_in_dir, settings.smtp_dir)
    if settings.mailpit_url:
        return await _mails_in_mailpit(settings.mailpit_url, order_id)
    return []


def _mails_in_dir(directory: Path) -> list[Mail]:
    return [
        Mail(
            mail.message_id,
            datetime.fromtimestamp(mail.received_at, UTC) if mail.received_at else None,
            mail.recipient,
        )
        for mail in Inbox(directory).scan()
    ]


async def _mails_in_mailpit(url: str, order_id: str) -> list[Mail]:
    # Every subject ("Order <id> confirmed", "... could not be fulfilled", "... cancelled")
    # names the order.
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_SECONDS) as client:
        try:
            answer = await client.get(
                f"{url}/api/v1/search", params={"query": f'subject:"{order_id}"'}
            )
            messages = answer.json().get("messages", [])
        except (httpx.HTTPError, ValueError):
            raise MailboxUnavailable(f"Mailpit at {redact(url)} did not answer") from None
    return [
        Mail(
            f"<{str(m.get('MessageID', '')).strip('<>')}>",
            datetime.fromisoformat(m["Created"].replace("Z", "+00:00"))
            if m.get("Created")
            else None,
            ", ".join(t.get("Address", "") for t in m.get("To", [])),
        )
        for m in messages
    ]


class MailboxUnavailable(Exception):
    """The mailbox could not be read: the timeline says so instead of omitting the emails."""
