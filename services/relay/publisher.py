"""One round of the relay: select a batch of Pending events, send it to Kafka, mark it.

Guarantees (the reasons are next to the code that keeps them):

* **No loss.** An event is marked ``Published`` only after Kafka acknowledged it (and, with
  transactions, after the batch's transaction committed). A crash at any instant leaves it
  ``Pending`` and the next leader sends it again with the same ``idempotencyKey`` header:
  duplicates are possible, loss is not.
* **Per-aggregate order.** Events of one aggregate are sent in ``aggregateVersion`` order, on
  one key (hence one partition), by an idempotent producer (``acks=all``) that keeps the order
  of in-flight batches. An event is held back while an earlier version of its aggregate is
  unpublished and not in front of it in this batch; after a failed send nothing from the first
  failure on is marked, so the next round resends in order. A ``Failed`` event blocks only the
  later events of its own aggregate.
* **Fencing.** With a ``transactional_id`` (the default) every batch is one Kafka transaction.
  All relays share the id, so when a new leader's producer initialises it bumps the producer
  epoch: the broker aborts a zombie leader's open transaction and rejects its later ones
  (``ProducerFenced``). Consumers read with ``isolation_level=read_committed`` and never see an
  aborted batch. The zombie may still write ``Published`` marks for batches it committed before
  being fenced; those marks are true, and the mark only ever moves ``Pending`` to ``Published``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pymongo
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor

from services.relay.metrics import RelayMetrics
from services.relay.settings import FAILPOINT_AFTER_KAFKA_ACK, RelaySettings
from shared.contracts import Header, OutboxStatus, topic_for_event_type
from shared.errors import FaultKind, TransientFault, classify
from shared.kafka import REQUEST_TIMEOUT_MS, Headers, encode_headers, make_producer

log = logging.getLogger(__name__)

# Kafka errors that the same record will hit on every attempt: retrying cannot help.
_PERMANENT_KAFKA_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.CorruptRecordException,
)
# This producer has been replaced by a newer one with the same transactional_id: we are a zombie.
_FENCED_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.ProducerFenced,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.TransactionalIdAuthorizationFailed,
)
# Sending or committing never takes longer than the producer's own request timeout plus slack;
# past that the producer's state is unknown and it is replaced.
KAFKA_DEADLINE_SECONDS = REQUEST_TIMEOUT_MS / 1000 + 5
# Deadline of the Published mark of one batch (see _mark_published).
MARK_DEADLINE_SECONDS = 30.0
# The order API gives an aggregate's first event version 1: nothing can come before it.
FIRST_VERSION = 1
# Read-ahead limits of the backlog cursor (see Publisher.select_batch).
CURSOR_MAX_BATCHES = 40
CURSOR_MAX_AGE_SECONDS = 30.0
FAILPOINT_EXIT_CODE = 86


class PoisonEvent(Exception):
    """The outbox document itself cannot become a Kafka record (bad type, missing payload)."""


class Fenced(Exception):
    """Another relay's producer took over our transactional id: stop publishing at once."""


def classify_publish_error(exc: BaseException) -> FaultKind:
    """The shared classification plus what the relay knows about Kafka's permanent errors."""
    if isinstance(exc, (PoisonEvent, *_PERMANENT_KAFKA_ERRORS)):
        return FaultKind.PERMANENT
    return classify(exc)


@dataclass(frozen=True)
class OutboxEvent:
    id: ObjectId
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    event_type: str
    payload: Any
    attempts: int
    created_at: datetime
    traceparent: str | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> OutboxEvent:
        return cls(
            id=doc["_id"],
            aggregate_type=str(doc.get("aggregateType", "")),
            aggregate_id=str(doc.get("aggregateId", "")),
            aggregate_version=int(doc.get("aggregateVersion") or 0),
            event_type=str(doc.get("eventType", "")),
            payload=doc.get("payload"),
            attempts=int(doc.get("attempts") or 0),
            created_at=doc.get("createdAt") or datetime.now(UTC),
            traceparent=doc.get("traceparent"),
        )

    def to_record(self) -> tuple[str, bytes, bytes, Headers]:
        """``(topic, key, value, headers)``; raises ``PoisonEvent`` if that is impossible."""
        try:
            topic = topic_for_event_type(self.event_type)
        except ValueError as exc:
            raise PoisonEvent(str(exc)) from exc
        if not isinstance(self.payload, str):
            raise PoisonEvent(f"payload must be a JSON string, got {type(self.payload).__name__}")
        if not self.aggregate_id:
            raise PoisonEvent("aggregateId is missing")
        try:
            value = self.payload.encode()
        except UnicodeEncodeError as exc:  # lone surrogates cannot be UTF-8
            raise PoisonEvent(f"payload is not encodable as UTF-8: {exc}") from exc
        headers = {
            Header.IDEMPOTENCY_KEY: str(self.id),
            Header.EVENT_TYPE: self.event_type,
            Header.AGGREGATE_TYPE: self.aggregate_type,
            Header.AGGREGATE_ID: self.aggregate_id,
            Header.AGGREGATE_VERSION: str(self.aggregate_version),
            Header.OCCURRED_AT: _utc(self.created_at).isoformat(),
        }
        if self.traceparent:
            headers[Header.TRACEPARENT] = self.traceparent
        return topic, self.aggregate_id.encode(), value, encode_headers(headers)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def plan_batch(batch: Sequence[OutboxEvent], blockers: dict[str, int]) -> list[OutboxEvent]:
    """The events of ``batch`` that may be sent now, in send order.

    Events are grouped per aggregate (in order of each aggregate's first appearance) and sorted
    by ``aggregateVersion``. ``blockers`` maps an aggregate to the lowest version that is not
    Published and cannot be sent in this batch (a Failed event): only versions below it may go,
    otherwise an event would overtake an earlier one of its aggregate.
    """
    groups: dict[str, list[OutboxEvent]] = {}
    for event in batch:
        groups.setdefault(event.aggregate_id, []).append(event)
    plan: list[OutboxEvent] = []
    for aggregate_id, events in groups.items():
        limit = blockers.get(aggregate_id)
        for event in sorted(events, key=lambda e: e.aggregate_version):
            if limit is not None and event.aggregate_version >= limit:
                break
            plan.append(event)
    return plan


def acknowledged(outcome: Sequence[BaseException | None], sent: Sequence[bool]) -> list[int]:
    """Indices to mark Published: the sent events acknowledged before the first failed send.

    Everything from the first failed send on stays Pending, even if Kafka acknowledged it, so
    the next round resends in order and no aggregate's events overtake each other. Events that
    were never sent (refused before queueing, or held behind such an event) do not cut the
    prefix: they are not on the wire, and their own aggregate's later events were not sent.
    """
    marked: list[int] = []
    for index, (error, was_sent) in enumerate(zip(outcome, sent, strict=True)):
        if not was_sent:
            continue
        if error is not None:
            break
        marked.append(index)
    return marked


@dataclass
class BatchResult:
    selected: int = 0
    published: int = 0
    failed: int = 0
    # A transient fault (Kafka away, a timeout): the caller backs off before the next round.
    transient: BaseException | None = None
    errors: list[tuple[OutboxEvent, BaseException]] = field(default_factory=list)


class Publisher:
    def __init__(
        self,
        outbox: AsyncCollection[dict[str, Any]],
        settings: RelaySettings,
        metrics: RelayMetrics,
        producer_factory: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._metrics = metrics
        self._producer_factory = producer_factory or self._default_producer
        self._producer: AIOKafkaProducer | None = None
        self._cursor: AsyncCursor[dict[str, Any]] | None = None
        self._cursor_opened = 0.0
        self._cursor_batches = 0
        self._published_ids: set[ObjectId] = set()

    def _default_producer(self) -> AIOKafkaProducer:
        return make_producer(
            self._settings.kafka_bootstrap_servers,
            transactional_id=self._settings.transactional_id or None,
        )

    async def close(self) -> None:
        await self.drop_cursor()
        await self._discard_producer()

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self._producer_factory()
            try:
                await asyncio.wait_for(producer.start(), KAFKA_DEADLINE_SECONDS)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 5)
                raise
            self._producer = producer
        return self._producer

    async def _discard_producer(self) -> None:
        """Throw the producer away: after a failed transaction or a timeout its state is unknown.

        A fresh producer with the same transactional id aborts whatever the old one left open.
        """
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    async def select_batch(self) -> list[OutboxEvent]:
        """The next (up to) ``batch_size`` Pending events, oldest first.

        A backlog is read through one cursor, ``batch_size`` documents per getMore, instead of
        one query per batch: the scan (and, on servers that sort in memory, the sort) is paid
        once per backlog, not once per batch. The cursor is only a read-ahead: it is dropped
        after any failure, when exhausted, and after ``CURSOR_MAX_BATCHES`` or
        ``CURSOR_MAX_AGE_SECONDS``, so new and retried events are never kept waiting long.
        Documents it returns can be stale only in one way, already published by this leader
        (pulled in as a predecessor): those are skipped.
        """
        if self._cursor is not None and (
            self._cursor_batches >= CURSOR_MAX_BATCHES
            or time.monotonic() - self._cursor_opened > CURSOR_MAX_AGE_SECONDS
        ):
            await self.drop_cursor()
        if self._cursor is None:
            self._cursor = await self._open_cursor()
            self._cursor_opened, self._cursor_batches = time.monotonic(), 0
        docs = await self._cursor.to_list(self._settings.batch_size)
        self._cursor_batches += 1
        if len(docs) < self._settings.batch_size:
            await self.drop_cursor()  # exhausted: the next round starts a fresh scan
        return [OutboxEvent.from_doc(doc) for doc in docs if doc["_id"] not in self._published_ids]

    async def _open_cursor(self) -> AsyncCursor[dict[str, Any]]:
        # Aggregates with a Failed event are skipped entirely: their later events must wait, and
        # selecting them would let a long blocked backlog fill every batch and starve the rest.
        failed_aggregates = await self._outbox.distinct(
            "aggregateId", {"status": OutboxStatus.FAILED.value}
        )
        query: dict[str, Any] = {"status": OutboxStatus.PENDING.value}
        if failed_aggregates:
            query["aggregateId"] = {"$nin": failed_aggregates}
        self._published_ids.clear()
        # Sorted by the index {status: 1, createdAt: 1} alone, so MongoDB walks the index; a
        # tie-breaker (such as _id) would force an in-memory sort of the whole backlog. Ties
        # need no order: per-aggregate order comes from the version.
        return (
            self._outbox.find(query)
            .sort([("status", 1), ("createdAt", 1)])
            .batch_size(self._settings.batch_size)
        )

    async def drop_cursor(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            with contextlib.suppress(Exception):
                await cursor.close()

    async def find_predecessors(
        self, batch: Sequence[OutboxEvent]
    ) -> tuple[list[OutboxEvent], dict[str, int]]:
        """Unpublished earlier events of the batch's aggregates that are not in the batch.

        Returns the Pending ones (sent in their place in version order, so a batch holding v1
        and v4 never lets v4 overtake v2 and v3, and a batch made only of later versions still
        makes progress) and, per aggregate, the lowest Failed version (nothing at or after it
        may go). Only aggregates whose versions in the batch do not run ``1, 2, ... k`` can have
        one; for the common case (an order's first event) no query is made.
        """
        versions: dict[str, set[int]] = {}
        for event in batch:
            versions.setdefault(event.aggregate_id, set()).add(event.aggregate_version)
        highest = {agg: max(v) for agg, v in versions.items()}
        # Nothing can be missing when an aggregate's versions in the batch run 1, 2, ... k.
        suspects = [
            agg
            for agg, v in versions.items()
            if min(v) > FIRST_VERSION or len(v) != highest[agg] - min(v) + 1
        ]
        if not suspects:
            return [], {}
        cursor = self._outbox.find(
            {
                "aggregateId": {"$in": suspects},
                "aggregateVersion": {"$lt": max(highest[agg] for agg in suspects)},
                "status": {"$ne": OutboxStatus.PUBLISHED.value},
                "_id": {"$nin": [event.id for event in batch]},
            }
        )
        extra: list[OutboxEvent] = []
        failed: dict[str, int] = {}
        async for doc in cursor:
            event = OutboxEvent.from_doc(doc)
            if event.aggregate_version >= highest[event.aggregate_id]:
                continue
            if doc.get("status") == OutboxStatus.PENDING.value:
                extra.append(event)
            elif event.aggregate_version < failed.get(
                event.aggregate_id, event.aggregate_version + 1
            ):
                failed[event.aggregate_id] = event.aggregate_version
        return extra, failed

    async def publish_once(self) -> BatchResult:
        """Publish one batch. MongoDB errors propagate; Kafka faults are reported in the result."""
        try:
            result = await self._publish_once()
        except BaseException:
            await self.drop_cursor()
            raise
        if result.transient is not None or result.errors:
            # Resend from the oldest unmarked event next round, not from the read-ahead.
            await self.drop_cursor()
        return result

    async def _publish_once(self) -> BatchResult:
        batch = await self.select_batch()
        result = BatchResult(selected=len(batch))
        if not batch:
            return result
        predecessors, failed = await self.find_predecessors(batch)
        plan = plan_batch([*predecessors, *batch], failed)
        if not plan:
            return result
        sent = [False] * len(plan)
        outcome: list[BaseException | None] = [None] * len(plan)
        try:
            await self._send(plan, outcome, sent)
        except Fenced:
            raise
        except Exception as exc:
            # The producer could not start, begin, send or commit: nothing of this batch counts
            # as published. A transaction in doubt is aborted by the next producer's init.
            # Not the events' fault: record it as transient so no event is ever parked as
            # Failed because of a batch-level problem.
            await self._discard_producer()
            fault = _BatchFault(exc)
            for index in range(len(plan)):
                if sent[index] or outcome[index] is None:
                    sent[index], outcome[index] = True, fault
        marked = acknowledged(outcome, sent)
        if marked and self._settings.failpoint == FAILPOINT_AFTER_KAFKA_ACK:
            log.critical(
                "failpoint after_kafka_ack: exiting before the Published mark",
                extra={"count": len(marked)},
            )
            os._exit(FAILPOINT_EXIT_CODE)
        await self._mark_published([plan[index] for index in marked])
        self._published_ids.update(plan[index].id for index in marked)
        result.published = len(marked)
        self._metrics.batch_size.observe(sum(sent))
        await self._record_failures(plan, outcome, result)
        return result

    async def _send(
        self, plan: list[OutboxEvent], outcome: list[BaseException | None], sent: list[bool]
    ) -> None:
        """Send ``plan`` with many records in flight, filling ``outcome``/``sent`` per event.

        Raises on a fault that spoils the whole batch (producer start, transaction begin or
        commit, a transient refusal); the caller then treats every event as unsent-failed.
        """
        producer = await self._ensure_producer()
        transactional = self._settings.transactional
        futures: dict[int, asyncio.Future[Any]] = {}
        if transactional:
            await self._guard(producer.begin_transaction())
        held: set[str] = set()
        for index, event in enumerate(plan):
            if event.aggregate_id in held:
                continue  # an earlier event of this aggregate was refused: never overtake it
            try:
                topic, key, value, headers = event.to_record()
                futures[index] = await self._guard(
                    producer.send(topic, value=value, key=key, headers=headers)
                )
            except Fenced:
                raise
            except Exception as exc:
                if classify_publish_error(exc) is FaultKind.TRANSIENT:
                    raise
                # Refused before it was queued (too large, unserialisable): the open
                # transaction and the other aggregates of the batch are unaffected.
                outcome[index] = exc
                held.add(event.aggregate_id)
                continue
            sent[index] = True
        if not futures:
            if transactional:
                await self._guard(producer.abort_transaction())
            return
        # An idempotent producer may retry a dead broker indefinitely: bound the wait, and
        # let the caller discard the producer (and its queued records) when it runs out.
        settled = await asyncio.wait_for(
            asyncio.gather(*futures.values(), return_exceptions=True), KAFKA_DEADLINE_SECONDS
        )
        failures = 0
        for index, delivery in zip(futures, settled, strict=True):
            if isinstance(delivery, BaseException):
                outcome[index] = delivery
                failures += 1
        if transactional:
            if failures:
                # A transaction with a failed send must be aborted; none of it becomes visible
                # to read_committed consumers, so none of it may be marked. The failed events
                # carry their own error; the others are collateral and simply stay Pending.
                await self._discard_producer()
                for index in futures:
                    if outcome[index] is None:
                        outcome[index] = _Collateral()
                return
            await self._guard(producer.commit_transaction())

    async def _guard(self, awaitable: Any) -> Any:
        """Await a producer call within the Kafka deadline; translate fencing errors."""
        try:
            return await asyncio.wait_for(awaitable, KAFKA_DEADLINE_SECONDS)
        except _FENCED_ERRORS as exc:
            await self._discard_producer()
            raise Fenced(repr(exc)) from exc

    async def _mark_published(self, events: Sequence[OutboxEvent]) -> None:
        if not events:
            return
        now = datetime.now(UTC)
        # One write for the whole acknowledged prefix. The status filter means a mark can only
        # move Pending -> Published: it never resurrects or overwrites anything else.
        # The mark gets a longer deadline than ordinary reads: a mark that times out means the
        # whole batch is published again, so on a slow server a 5 s deadline could turn into a
        # loop of re-publishing the same 500 events. Waiting longer here is the cheaper failure.
        with pymongo.timeout(max(MARK_DEADLINE_SECONDS, self._settings.mongo_timeout_seconds)):
            await self._outbox.update_many(
                {
                    "_id": {"$in": [event.id for event in events]},
                    "status": OutboxStatus.PENDING.value,
                },
                {"$set": {"status": OutboxStatus.PUBLISHED.value, "publishedAt": now}},
            )
        self._metrics.published.inc(len(events))
        for event in events:
            self._metrics.commit_to_publish.observe(
                max(0.0, (now - _utc(event.created_at)).total_seconds())
            )

    async def _record_failures(
        self,
        plan: Sequence[OutboxEvent],
        outcome: Sequence[BaseException | None],
        result: BatchResult,
    ) -> None:
        transient_ids: list[ObjectId] = []
        transient_error: BaseException | None = None
        for event, error in zip(plan, outcome, strict=True):
            if error is None or isinstance(error, _Collateral):
                continue
            kind = classify_publish_error(error)
            self._metrics.publish_errors.labels(kind=kind.value).inc()
            if kind is FaultKind.TRANSIENT:
                transient_ids.append(event.id)
                transient_error = transient_error or error
                continue
            result.errors.append((event, error))
            attempts = event.attempts + 1
            give_up = kind is FaultKind.PERMANENT or attempts >= self._settings.max_attempts
            update: dict[str, Any] = {"lastError": _describe(error)}
            if give_up:
                update["status"] = OutboxStatus.FAILED.value
                result.failed += 1
                self._metrics.events_failed.inc()
                log.error(
                    "event can never be published; marked Failed (its aggregate waits)",
                    extra={
                        "event_id": str(event.id),
                        "aggregate_id": event.aggregate_id,
                        "attempt": attempts,
                        "reason": _describe(error),
                    },
                )
            else:
                log.warning(
                    "publish failed; will retry",
                    extra={
                        "event_id": str(event.id),
                        "attempt": attempts,
                        "reason": _describe(error),
                    },
                )
            await self._outbox.update_one(
                {"_id": event.id, "status": OutboxStatus.PENDING.value},
                {"$set": update, "$inc": {"attempts": 1}},
            )
        if transient_ids:
            # Events stay Pending; the count and cause are on record for operators.
            await self._outbox.update_many(
                {"_id": {"$in": transient_ids}, "status": OutboxStatus.PENDING.value},
                {"$set": {"lastError": _describe(transient_error)}, "$inc": {"attempts": 1}},
            )
            result.transient = transient_error


class _Collateral(Exception):
    """Outcome of an event whose send succeeded inside a transaction that had to be aborted."""


class _BatchFault(TransientFault):
    """A fault of the whole batch (producer start, begin, commit): retried without limit."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(_describe(cause))
        self.cause = cause


def _describe(error: BaseException | None) -> str:
    if isinstance(error, _BatchFault):
        return str(error)
    return f"{type(error).__name__}: {error}"[:1000]
