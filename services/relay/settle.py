"""Settling a round: what it decided (Published marks with Kafka's positions, attempts,
``Failed``) written in one transaction fenced by the slot's lease epoch, then the round's
metrics and logs.

Every filter includes ``status: Pending``: a write can only move an event on from Pending, never
resurrect or overwrite anything else, so settling an event twice is harmless. If another relay
took the slot over, nothing is written and :class:`services.relay.lease.Fenced` is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pymongo
from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from services.relay.lease import Lease
from services.relay.metrics import RelayMetrics
from services.relay.outbox_event import Malformed, OutboxEvent, utc
from services.relay.rules import Verdict, classify_publish_error, describe
from services.relay.settings import RelaySettings
from shared.contracts import OutboxStatus
from shared.errors import FaultKind
from shared.outbox import OutboxField

log = logging.getLogger(__name__)

# Deadline of the Published mark of one batch (see Settler.settle).
MARK_DEADLINE_SECONDS = 30.0


@dataclass
class BatchResult:
    selected: int = 0
    published: int = 0
    failed: int = 0
    # A transient fault (Kafka away, a timeout): the caller backs off before the next round.
    transient: BaseException | None = None
    # Stream-fed rounds: delivered events of the slot left to the sweep (stale, unreadable).
    deferred: int = 0
    errors: list[tuple[OutboxEvent, BaseException]] = field(default_factory=list)


class Settler:
    """Writes a round's outcome for one slot, fenced by its lease."""

    def __init__(
        self,
        outbox: AsyncCollection[dict[str, Any]],
        settings: RelaySettings,
        metrics: RelayMetrics,
        lease: Lease,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._metrics = metrics
        self._lease = lease

    async def settle(
        self,
        published: Sequence[tuple[OutboxEvent, Any]],
        plan: Sequence[OutboxEvent],
        outcome: Sequence[BaseException | None],
        verdicts: Mapping[int, Verdict],
        malformed: Sequence[Malformed],
    ) -> int:
        """Write what the round decided (marks, attempts, Failed) in one fenced transaction;
        returns how many Published marks found their event still Pending.

        ``published`` pairs each acknowledged event with Kafka's RecordMetadata for it: the
        Published mark records the topic, partition and offset. The transaction is conditional
        on our lease epoch (:meth:`Lease.write_fenced`).
        """
        if not published and not verdicts and not malformed:
            return 0
        f = OutboxField
        pending = OutboxStatus.PENDING.value
        failed = OutboxStatus.FAILED.value
        now = datetime.now(UTC)
        transient_ids = [plan[i].id for i, v in verdicts.items() if v is Verdict.TRANSIENT]
        transient_error = next(
            (outcome[i] for i, v in verdicts.items() if v is Verdict.TRANSIENT), None
        )

        async def work(session: AsyncClientSession, epoch: int) -> int:
            matched = 0
            if published:
                # One bulk write (one round trip) for the batch's marks: each event gets its own
                # partition and offset, which one update_many cannot set.
                marks = await self._outbox.bulk_write(
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
                matched = marks.matched_count
            for index, verdict in verdicts.items():
                if verdict is Verdict.TRANSIENT:
                    continue
                update: dict[str, Any] = {
                    f.LAST_ERROR: describe(outcome[index]),
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
                        "$set": {f.LAST_ERROR: describe(transient_error), f.RELAY_EPOCH: epoch},
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
            return matched

        # The write gets a longer deadline than ordinary reads: a mark that times out means the
        # whole batch is published again, so on a slow server a 5 s deadline could turn into a
        # loop of re-publishing the same 500 events. Waiting longer here is the cheaper failure.
        with pymongo.timeout(max(MARK_DEADLINE_SECONDS, self._settings.mongo_timeout_seconds)):
            matched = await self._lease.write_fenced(work)
        if published:
            self._metrics.published.inc(len(published))
            for event, _ in published:
                self._metrics.commit_to_publish.observe(
                    max(0.0, (now - utc(event.created_at)).total_seconds())
                )
        return matched

    def report(
        self,
        plan: Sequence[OutboxEvent],
        outcome: Sequence[BaseException | None],
        verdicts: Mapping[int, Verdict],
        malformed: Sequence[Malformed],
        result: BatchResult,
    ) -> None:
        """Metrics, logs and the result of what :meth:`settle` wrote."""
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
                "reason": describe(error),
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


def log_published(published: Sequence[tuple[OutboxEvent, Any]]) -> None:
    """One line per published event with where Kafka put it: the consumers log the same
    topic, partition and offset, so one event can be followed by field across the services."""
    for event, where in published:
        log.info(
            "published",
            extra={
                "event_id": str(event.id),
                # Both outboxes key their aggregates by order id: the Order's own events, and
                # inventory's Reservation of that order (shared.contracts). The type tells which.
                "order_id": event.aggregate_id,
                "aggregate_type": event.aggregate_type,
                "topic": getattr(where, "topic", None),
                "partition": getattr(where, "partition", None),
                "offset": getattr(where, "offset", None),
            },
        )
