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
* **One slot.** A publisher publishes the events of its lease's slot only (``slot: n``, index
  ``slot_1_status_1_createdAt_1``); every event of an aggregate is in one slot, so the order
  guarantees above hold per slot and therefore everywhere.
* **Fencing.** With a ``transactional_id`` (the default) every batch is one Kafka transaction.
  Every holder of a slot uses the slot's id (``<id>-slot-<n>``), so when a new holder's producer
  initialises it bumps the producer epoch: the broker aborts a zombie holder's open transaction
  and rejects its later ones (``ProducerFenced``). Consumers read with
  ``isolation_level=read_committed`` and never see an aborted batch. A fencing error from
  anywhere (a producer call or a record's delivery) makes the relay step down at once. Every
  status write (``Published``, ``Failed``, ``attempts``) is one transaction conditional on the
  lease epoch (:meth:`Lease.write_fenced`): a deposed leader writes nothing.
* **Budget.** Only a fault attributable to the event itself spends its ``attempts`` (and can
  make it ``Failed``): a record refused before it was queued, or a delivery error that hit it
  alone while other records of the round went through. Transient faults and errors that hit the
  whole round count in ``transientAttempts`` instead and the round is retried after a backoff.
* **Malformed documents** (a field of the wrong type or missing) are marked ``Failed`` with the
  reason; they never stop the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pymongo
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from bson import ObjectId
from opentelemetry.trace import Span
from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor

from services.relay.lease import Fenced, Lease, transactional_id_for
from services.relay.metrics import RelayMetrics
from services.relay.settings import FAILPOINT_AFTER_KAFKA_ACK, RelaySettings
from shared.contracts import Header, OutboxStatus, topic_for_event_type
from shared.errors import FaultKind, TransientFault, classify
from shared.kafka import REQUEST_TIMEOUT_MS, Headers, encode_headers, make_producer
from shared.lifecycle import FAILPOINT_EXIT_CODE
from shared.outbox import FIRST_VERSION, OutboxField
from shared.tracing import batch_span, end_span, event_span

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
# Read-ahead limits of the backlog cursor (see Publisher.select_batch).
CURSOR_MAX_BATCHES = 40
CURSOR_MAX_AGE_SECONDS = 30.0


class PoisonEvent(Exception):
    """The outbox document itself cannot become a Kafka record (bad type, missing payload)."""


class MalformedEvent(PoisonEvent):
    """An outbox document the relay cannot even read (a field missing or of the wrong type)."""


def is_fencing(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what caused it) says another producer took our transactional id.

    Checked on every producer call and on every record's delivery result: aiokafka fails all
    pending futures with the sender's ``ProducerFenced`` when the broker refuses our epoch.
    """
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (Fenced, *_FENCED_ERRORS)):
            return True
        exc = exc.cause if isinstance(exc, _BatchFault) else exc.__cause__ or exc.__context__
        seen += 1
    return False


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
    def from_doc(cls, doc: Mapping[str, Any]) -> OutboxEvent:
        """Read an outbox document; raises :class:`MalformedEvent` naming the field at fault.

        Strict on the fields the order API writes (the contract of ``shared.outbox``): a
        version of ``"v2"`` or a Decimal128, a missing aggregate id, a creation time that is
        not a date. Lenient only on the relay's own bookkeeping (``attempts``), which an
        operator may have reset by hand.
        """
        f = OutboxField
        try:
            return cls(
                id=doc[f.ID],
                aggregate_type=_text(doc, f.AGGREGATE_TYPE),
                aggregate_id=_text(doc, f.AGGREGATE_ID),
                aggregate_version=_version(doc),
                event_type=_text(doc, f.EVENT_TYPE),
                payload=doc.get(f.PAYLOAD),
                attempts=_count(doc, f.ATTEMPTS),
                created_at=_moment(doc, f.CREATED_AT),
                traceparent=_optional_text(doc, f.TRACEPARENT),
            )
        except KeyError as exc:  # only _id, which MongoDB always sets
            raise MalformedEvent(f"{exc} is missing") from exc

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


def _text(doc: Mapping[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{name} must be a non-empty string, got {_shown(value)}")
    return value


def _optional_text(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise MalformedEvent(f"{name} must be a string or null, got {_shown(value)}")
    return value or None


def _version(doc: Mapping[str, Any]) -> int:
    name = OutboxField.AGGREGATE_VERSION
    value = doc.get(name)
    # bool is an int in Python; Int64 is one too and is what a driver may write for a long.
    if not isinstance(value, int) or isinstance(value, bool) or value < FIRST_VERSION:
        raise MalformedEvent(f"{name} must be an integer >= {FIRST_VERSION}, got {_shown(value)}")
    return int(value)


def _count(doc: Mapping[str, Any], name: str) -> int:
    value = doc.get(name)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedEvent(f"{name} must be an integer >= 0, got {_shown(value)}")
    return int(value)


def _moment(doc: Mapping[str, Any], name: str) -> datetime:
    value = doc.get(name)
    if not isinstance(value, datetime):
        raise MalformedEvent(f"{name} must be a date, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:200]


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


class Verdict(StrEnum):
    """What one failed send does to its event."""

    # Not the event's fault (Kafka away, an error that hit the whole round): transientAttempts.
    TRANSIENT = "transient"
    # The event's own fault, budget left: attempts + 1, stays Pending.
    RETRY = "retry"
    # The event's own fault, permanent or budget spent: Failed.
    FAIL = "fail"


def judge_failures(
    outcome: Sequence[BaseException | None],
    sent: Sequence[bool],
    max_attempts: int,
    attempts: Sequence[int],
) -> dict[int, Verdict]:
    """The verdict for every failed event of a round (index -> verdict); pure.

    A fault spends an event's budget only when it is attributable to the event:

    * refused before it was queued (``sent`` is False: too large, unserialisable), or
    * a delivery error that hit this record alone (aiokafka fails every record of a partition's
      batch with one error object; one object shared by several records is the batch's fault)
      while some other record of the round was acknowledged (evidence that Kafka works).

    Everything else (transient faults, one error for the whole round) is ``TRANSIENT``: a Kafka
    outage followed by a non-retriable error on every record must not park healthy events.
    """
    # Acknowledged by Kafka, even inside a transaction that was then aborted for another record.
    # A failed record is never among them, so "another record got through" is just "any".
    some_delivered = any(
        was_sent and (error is None or isinstance(error, _Collateral))
        for error, was_sent in zip(outcome, sent, strict=True)
    )
    sharers: dict[int, int] = {}
    for error in outcome:
        if error is not None and not isinstance(error, _Collateral):
            sharers[id(error)] = sharers.get(id(error), 0) + 1
    verdicts: dict[int, Verdict] = {}
    for index, error in enumerate(outcome):
        if error is None or isinstance(error, _Collateral):
            continue
        kind = classify_publish_error(error)
        if kind is FaultKind.TRANSIENT:
            verdicts[index] = Verdict.TRANSIENT
            continue
        # A delivery error (sent) must be this record's alone, with Kafka otherwise working.
        if sent[index] and (sharers[id(error)] > 1 or not some_delivered):
            verdicts[index] = Verdict.TRANSIENT
            continue
        give_up = kind is FaultKind.PERMANENT or attempts[index] + 1 >= max_attempts
        verdicts[index] = Verdict.FAIL if give_up else Verdict.RETRY
    return verdicts


@dataclass(frozen=True)
class Malformed:
    """An outbox document that could not be read, with the reason (it becomes Failed)."""

    id: Any
    aggregate_id: str | None
    reason: str


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
        lease: Lease,
        producer_factory: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._metrics = metrics
        self._lease = lease
        self._producer_factory = producer_factory or self._default_producer
        self._producer: AIOKafkaProducer | None = None
        self._cursor: AsyncCursor[dict[str, Any]] | None = None
        self._cursor_opened = 0.0
        self._cursor_batches = 0
        self._published_ids: set[ObjectId] = set()

    @property
    def slot(self) -> int:
        """The slot this publisher publishes: its lease's."""
        return self._lease.slot

    def _default_producer(self) -> AIOKafkaProducer:
        settings = self._settings
        return make_producer(
            settings.kafka_bootstrap_servers,
            transactional_id=transactional_id_for(settings.transactional_id, self.slot)
            if settings.transactional
            else None,
            # A round queues all its records before it waits for them: lingering would batch
            # nothing more and delay every small round (at light load, every event).
            linger_ms=0,
        )

    async def close(self) -> None:
        await self.drop_cursor()
        await self._discard_producer()

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            # Initialising a producer with the shared transactional id fences whoever holds it.
            # A leader that was deposed while paused must not do that to the real leader:
            # confirm the lease first (a narrowing, not a guarantee; writes are fenced anyway).
            if self._settings.transactional:
                await self._lease.confirm()
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

    async def select_batch(self) -> tuple[list[OutboxEvent], list[Malformed]]:
        """The next (up to) ``batch_size`` Pending events, oldest first, and the documents among
        them that could not be read.

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
        events: list[OutboxEvent] = []
        malformed: list[Malformed] = []
        for doc in docs:
            if doc[OutboxField.ID] in self._published_ids:
                continue
            event = _read(doc, malformed)
            if event is not None:
                events.append(event)
        return events, malformed

    async def _open_cursor(self) -> AsyncCursor[dict[str, Any]]:
        f = OutboxField
        # Aggregates with a Failed event are skipped entirely: their later events must wait, and
        # selecting them would let a long blocked backlog fill every batch and starve the rest.
        failed_aggregates = await self._outbox.distinct(
            f.AGGREGATE_ID, {f.SLOT: self.slot, f.STATUS: OutboxStatus.FAILED.value}
        )
        query: dict[str, Any] = {f.SLOT: self.slot, f.STATUS: OutboxStatus.PENDING.value}
        if failed_aggregates:
            query[f.AGGREGATE_ID] = {"$nin": failed_aggregates}
        self._published_ids.clear()
        # Sorted by the index {slot: 1, status: 1, createdAt: 1} alone, so MongoDB walks the
        # index; a tie-breaker (such as _id) would force an in-memory sort of the whole backlog.
        # Ties need no order: per-aggregate order comes from the version.
        return (
            self._outbox.find(query)
            .sort([(f.SLOT, 1), (f.STATUS, 1), (f.CREATED_AT, 1)])
            .batch_size(self._settings.batch_size)
        )

    async def drop_cursor(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            with contextlib.suppress(Exception):
                await cursor.close()

    async def find_predecessors(
        self, batch: Sequence[OutboxEvent], malformed: list[Malformed]
    ) -> tuple[list[OutboxEvent], dict[str, int]]:
        """Unpublished earlier events of the batch's aggregates that are not in the batch.

        Returns the Pending ones (sent in their place in version order, so a batch holding v1
        and v4 never lets v4 overtake v2 and v3, and a batch made only of later versions still
        makes progress) and, per aggregate, the lowest Failed version (nothing at or after it
        may go). Only aggregates whose versions in the batch do not run ``1, 2, ... k`` can have
        one; for the common case (an order's first event) no query is made. An unreadable
        predecessor is added to ``malformed`` and holds its whole aggregate back this round.
        """
        f = OutboxField
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
                f.AGGREGATE_ID: {"$in": suspects},
                f.AGGREGATE_VERSION: {"$lt": max(highest[agg] for agg in suspects)},
                f.STATUS: {"$ne": OutboxStatus.PUBLISHED.value},
                f.ID: {"$nin": [event.id for event in batch] + [bad.id for bad in malformed]},
            }
        )
        extra: list[OutboxEvent] = []
        failed: dict[str, int] = {}
        async for doc in cursor:
            found = _read(doc, malformed)
            if found is None:
                aggregate = doc.get(f.AGGREGATE_ID)
                if isinstance(aggregate, str):
                    failed[aggregate] = 0  # which version it is is unknown: hold all back
                continue
            event = found
            if event.aggregate_version >= highest[event.aggregate_id]:
                continue
            if doc.get(f.STATUS) == OutboxStatus.PENDING.value:
                extra.append(event)
            elif event.aggregate_version < failed.get(
                event.aggregate_id, event.aggregate_version + 1
            ):
                failed[event.aggregate_id] = event.aggregate_version
        return extra, failed

    async def publish_once(self) -> BatchResult:
        """Publish one batch. MongoDB errors and :class:`Fenced` propagate; Kafka faults are
        reported in the result."""
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
        batch, malformed = await self.select_batch()
        result = BatchResult(selected=len(batch) + len(malformed))
        if not batch and not malformed:
            return result
        predecessors, failed = await self.find_predecessors(batch, malformed)
        for bad in malformed:
            if bad.aggregate_id is not None:
                # Its version cannot be trusted: the whole aggregate waits behind it (from the
                # next round on it is skipped like any aggregate with a Failed event).
                failed[bad.aggregate_id] = 0
        plan = plan_batch([*predecessors, *batch], failed)
        sent = [False] * len(plan)
        outcome: list[BaseException | None] = [None] * len(plan)
        placed: dict[int, Any] = {}  # plan index -> the RecordMetadata Kafka acknowledged
        if plan:
            try:
                await self._send(plan, outcome, sent, placed)
            except Fenced:
                raise
            except Exception as exc:
                # The producer could not start, begin, send or commit: nothing of this batch
                # counts as published. A transaction in doubt is aborted by the next producer's
                # init. Not the events' fault: recorded as transient, so no event is ever parked
                # as Failed because of a batch-level problem.
                await self._discard_producer()
                if is_fencing(exc):
                    raise Fenced(repr(exc)) from exc
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
        verdicts = judge_failures(
            outcome, sent, self._settings.max_attempts, [event.attempts for event in plan]
        )
        published = [(plan[index], placed.get(index)) for index in marked]
        await self._settle(published, plan, outcome, verdicts, malformed)
        _log_published(published)
        self._published_ids.update(plan[index].id for index in marked)
        result.published = len(marked)
        if plan:
            self._metrics.batch_size.observe(sum(sent))
        self._report(plan, outcome, verdicts, malformed, result)
        return result

    async def _send(
        self,
        plan: list[OutboxEvent],
        outcome: list[BaseException | None],
        sent: list[bool],
        placed: dict[int, Any] | None = None,
    ) -> None:
        """Send ``plan`` with many records in flight, filling ``outcome``/``sent`` per event
        (and ``placed`` with the metadata, partition and offset, of each acknowledged record).

        Raises on a fault that spoils the whole batch (producer start, transaction begin or
        commit, a transient refusal); the caller then treats every event as unsent-failed.
        Raises :class:`Fenced` when any record's delivery says our producer was fenced.
        """
        # One span per event (child of the event's stored traceparent, linked to the batch's
        # span), ended with the event's outcome; those a failure left open end here too.
        spans: dict[int, Span] = {}
        with batch_span(len(plan)) as batch:
            try:
                await self._send_events(plan, outcome, sent, placed, spans, batch)
            finally:
                for index, span in spans.items():
                    end_span(span, outcome[index])

    async def _send_events(
        self,
        plan: list[OutboxEvent],
        outcome: list[BaseException | None],
        sent: list[bool],
        placed: dict[int, Any] | None,
        spans: dict[int, Span],
        batch: Span,
    ) -> None:
        producer = await self._ensure_producer()
        transactional = self._settings.transactional
        epoch = self._lease.epoch
        if epoch is None:
            raise Fenced("the lease is not held")
        # Who published each record: the slot and its holder's epoch. Anyone reading the topic
        # can check that a slot's records never go back to an older holder (two publishers).
        holder = encode_headers({Header.RELAY_SLOT: str(self.slot), Header.RELAY_EPOCH: str(epoch)})
        futures: dict[int, asyncio.Future[Any]] = {}
        if transactional:
            await self._guard(producer.begin_transaction())
        held: set[str] = set()
        for index, event in enumerate(plan):
            if event.aggregate_id in held:
                continue  # an earlier event of this aggregate was refused: never overtake it
            try:
                topic, key, value, headers = event.to_record()
                spans[index] = event_span(event.traceparent, topic, str(event.id), batch)
                futures[index] = await self._guard(
                    producer.send(topic, value=value, key=key, headers=headers + holder)
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
                if is_fencing(delivery):
                    # Another relay initialised our transactional id: we are a zombie. Nothing
                    # of this round is recorded (not even attempts); step down now.
                    await self._discard_producer()
                    raise Fenced(repr(delivery)) from delivery
                outcome[index] = delivery
                failures += 1
            elif placed is not None:
                placed[index] = delivery
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
            if not self._lease.is_held():
                # Our lease ran out while the batch was in flight (the process was paused, or
                # the sends were slow): a standby may lead already and its producer may not have
                # fenced ours yet. Committing now would publish as a deposed leader; abort, and
                # leave the events Pending for whoever leads.
                with contextlib.suppress(Exception):
                    await self._guard(producer.abort_transaction())
                await self._discard_producer()
                raise Fenced("the lease lapsed before the commit; batch aborted")
            await self._guard(producer.commit_transaction())

    async def _guard(self, awaitable: Any) -> Any:
        """Await a producer call within the Kafka deadline; translate fencing errors."""
        try:
            return await asyncio.wait_for(awaitable, KAFKA_DEADLINE_SECONDS)
        except _FENCED_ERRORS as exc:
            await self._discard_producer()
            raise Fenced(repr(exc)) from exc

    async def _settle(
        self,
        published: Sequence[tuple[OutboxEvent, Any]],
        plan: Sequence[OutboxEvent],
        outcome: Sequence[BaseException | None],
        verdicts: Mapping[int, Verdict],
        malformed: Sequence[Malformed],
    ) -> None:
        """Write what the round decided (marks, attempts, Failed) in one fenced transaction.

        ``published`` pairs each acknowledged event with Kafka's RecordMetadata for it: the
        Published mark records the topic, partition and offset. Every filter includes ``status:
        Pending``: a write can only move an event on from Pending, never resurrect or overwrite
        anything else. The transaction is conditional on our lease epoch
        (:meth:`Lease.write_fenced`): if another relay took over, nothing of it is written and
        :class:`Fenced` is raised.
        """
        if not published and not verdicts and not malformed:
            return
        f = OutboxField
        pending = OutboxStatus.PENDING.value
        failed = OutboxStatus.FAILED.value
        now = datetime.now(UTC)
        transient_ids = [plan[i].id for i, v in verdicts.items() if v is Verdict.TRANSIENT]
        transient_error = next(
            (outcome[i] for i, v in verdicts.items() if v is Verdict.TRANSIENT), None
        )

        async def work(session: AsyncClientSession, epoch: int) -> None:
            if published:
                # One bulk write (one round trip) for the batch's marks: each event gets its own
                # partition and offset, which one update_many cannot set.
                await self._outbox.bulk_write(
                    [
                        UpdateOne(
                            {f.ID: event.id, f.STATUS: pending},
                            {"$set": published_fields(where, epoch, now)},
                        )
                        for event, where in published
                    ],
                    ordered=False,
                    session=session,
                )
            for index, verdict in verdicts.items():
                if verdict is Verdict.TRANSIENT:
                    continue
                update: dict[str, Any] = {
                    f.LAST_ERROR: _describe(outcome[index]),
                    f.RELAY_EPOCH: epoch,
                }
                if verdict is Verdict.FAIL:
                    update[f.STATUS] = failed
                await self._outbox.update_one(
                    {f.ID: plan[index].id, f.STATUS: pending},
                    {"$set": update, "$inc": {f.ATTEMPTS: 1}},
                    session=session,
                )
            if transient_ids:
                # Not the events' fault: they keep their budget; the count and the cause are on
                # record for operators.
                await self._outbox.update_many(
                    {f.ID: {"$in": transient_ids}, f.STATUS: pending},
                    {
                        "$set": {f.LAST_ERROR: _describe(transient_error), f.RELAY_EPOCH: epoch},
                        "$inc": {f.TRANSIENT_ATTEMPTS: 1},
                    },
                    session=session,
                )
            for bad in malformed:
                await self._outbox.update_one(
                    {f.ID: bad.id, f.STATUS: pending},
                    {
                        "$set": {
                            f.STATUS: failed,
                            f.LAST_ERROR: f"malformed: {bad.reason}",
                            f.RELAY_EPOCH: epoch,
                        }
                    },
                    session=session,
                )

        # The write gets a longer deadline than ordinary reads: a mark that times out means the
        # whole batch is published again, so on a slow server a 5 s deadline could turn into a
        # loop of re-publishing the same 500 events. Waiting longer here is the cheaper failure.
        with pymongo.timeout(max(MARK_DEADLINE_SECONDS, self._settings.mongo_timeout_seconds)):
            await self._lease.write_fenced(work)
        if published:
            self._metrics.published.inc(len(published))
            for event, _ in published:
                self._metrics.commit_to_publish.observe(
                    max(0.0, (now - _utc(event.created_at)).total_seconds())
                )

    def _report(
        self,
        plan: Sequence[OutboxEvent],
        outcome: Sequence[BaseException | None],
        verdicts: Mapping[int, Verdict],
        malformed: Sequence[Malformed],
        result: BatchResult,
    ) -> None:
        """Metrics, logs and the result of what :meth:`_settle` wrote."""
        for index, verdict in verdicts.items():
            event, error = plan[index], outcome[index]
            assert error is not None
            self._metrics.publish_errors.labels(kind=classify_publish_error(error).value).inc()
            if verdict is Verdict.TRANSIENT:
                result.transient = result.transient or error
                continue
            result.errors.append((event, error))
            fields = {
                "event_id": str(event.id),
                "aggregate_id": event.aggregate_id,
                "attempt": event.attempts + 1,
                "reason": _describe(error),
            }
            if verdict is Verdict.FAIL:
                result.failed += 1
                self._metrics.events_failed.inc()
                log.error(
                    "event can never be published; marked Failed (its aggregate waits)",
                    extra=fields,
                )
            else:
                log.warning("publish failed; will retry", extra=fields)
        for bad in malformed:
            result.failed += 1
            self._metrics.events_failed.inc()
            self._metrics.publish_errors.labels(kind=FaultKind.PERMANENT.value).inc()
            log.error(
                "outbox document is malformed; marked Failed (its aggregate waits)",
                extra={
                    "event_id": str(bad.id),
                    "aggregate_id": bad.aggregate_id,
                    "reason": bad.reason,
                },
            )


def published_fields(where: Any, epoch: int, now: datetime) -> dict[str, Any]:
    """The fields of an event's Published mark: status, time, the leader's epoch, and where
    Kafka put the record (``where`` is the send's RecordMetadata; None leaves those out)."""
    f = OutboxField
    fields: dict[str, Any] = {
        f.STATUS: OutboxStatus.PUBLISHED.value,
        f.PUBLISHED_AT: now,
        f.RELAY_EPOCH: epoch,
    }
    if where is not None:
        fields[f.KAFKA_TOPIC] = where.topic
        fields[f.KAFKA_PARTITION] = int(where.partition)
        fields[f.KAFKA_OFFSET] = int(where.offset)
    return fields


def _log_published(published: Sequence[tuple[OutboxEvent, Any]]) -> None:
    """One line per published event with where Kafka put it: the consumers log the same
    topic, partition and offset, so one event can be followed by field across the services."""
    for event, where in published:
        log.info(
            "published",
            extra={
                "event_id": str(event.id),
                # Every aggregate of this outbox is an order (shared.contracts.AGGREGATE_ORDER).
                "order_id": event.aggregate_id,
                "topic": getattr(where, "topic", None),
                "partition": getattr(where, "partition", None),
                "offset": getattr(where, "offset", None),
            },
        )


def _read(doc: Mapping[str, Any], malformed: list[Malformed]) -> OutboxEvent | None:
    """The event of ``doc``, or None after recording why it cannot be read."""
    try:
        return OutboxEvent.from_doc(doc)
    except MalformedEvent as exc:
        aggregate = doc.get(OutboxField.AGGREGATE_ID)
        malformed.append(
            Malformed(
                doc.get(OutboxField.ID), aggregate if isinstance(aggregate, str) else None, str(exc)
            )
        )
        return None


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
