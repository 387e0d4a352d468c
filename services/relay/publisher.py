"""One round of a slot's relay: take a batch of Pending events, send it to Kafka, mark it.

A round's batch comes from one of two places: the sweep (:meth:`Publisher.publish_once`) reads
the slot's Pending events from the collection, the source of truth; a stream-fed round
(:meth:`Publisher.publish_streamed`) takes the inserted documents the change stream delivered,
without reading them again, as far as :mod:`services.relay.stream_feed` trusts them. Both plan,
send and settle the same way, so every guarantee below holds for both; the worker runs one
round at a time, and each remembers what the other handled (no event goes out twice in one
process in the steady state). The round is put together from one module per concern: what to send
(:mod:`services.relay.selection`), the pure decisions (:mod:`services.relay.rules`), sending in
a Kafka transaction (:mod:`services.relay.sender`) and settling the outcome with the fenced mark
(:mod:`services.relay.settle`).

Guarantees (the reasons are next to the code that keeps them):

* **No loss.** An event is marked ``Published`` only after Kafka acknowledged it (and, with
  transactions, after the batch's transaction committed). A crash at any instant leaves it
  ``Pending`` and the next holder sends it again with the same ``idempotencyKey`` header:
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
* **Fencing.** Every batch is one Kafka transaction under the slot's transactional id
  (:mod:`services.relay.sender`), and every status write is one MongoDB transaction conditional
  on the lease epoch (:mod:`services.relay.settle`): a deposed holder publishes and writes
  nothing.
* **Budget.** Only a fault attributable to the event itself spends its ``attempts`` (and can
  make it ``Failed``): a record refused before it was queued, or a delivery error that hit it
  alone while other records of the round went through. Transient faults and errors that hit the
  whole round count in ``transientAttempts`` instead and the round is retried after a backoff.
* **Malformed documents** (a field of the wrong type or missing) are marked ``Failed`` with the
  reason; they never stop the relay.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor

from services.relay.lease import Fenced, Lease
from services.relay.metrics import RelayMetrics
from services.relay.outbox_event import Malformed, OutboxEvent
from services.relay.rules import (
    BatchFault,
    Verdict,
    acknowledged,
    is_fencing,
    judge_failures,
    plan_batch,
)
from services.relay.selection import ReadAhead, find_predecessors
from services.relay.sender import KafkaSender
from services.relay.settings import FAILPOINT_AFTER_KAFKA_ACK, RelaySettings
from services.relay.settle import BatchResult, Settler, log_published, published_fields
from services.relay.stream_feed import PublishedVersions, Recent, accept_streamed
from shared.lifecycle import FAILPOINT_EXIT_CODE

log = logging.getLogger(__name__)


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
        self._read_ahead = ReadAhead(outbox, lease.slot, settings.batch_size)
        self._sender = KafkaSender(settings, lease, producer_factory)
        self._settler = Settler(outbox, settings, metrics, lease)
        # Created once the slot's lease is held: documents inserted before are not trusted from
        # the stream (an earlier holder may have handled them).
        self._tenure_start = datetime.now(UTC)
        self._recent = Recent()
        self._versions = PublishedVersions()
        # Events this holder published straight from the change stream (tests and logs read it).
        self.stream_fed = 0

    @property
    def slot(self) -> int:
        """The slot this publisher publishes: its lease's."""
        return self._lease.slot

    async def close(self) -> None:
        await self._read_ahead.drop()
        await self._sender.discard()

    async def _open_cursor(self) -> AsyncCursor[dict[str, Any]]:
        """The slot's backlog scan (integration tests explain it)."""
        return await self._read_ahead.open_cursor()

    async def publish_once(self) -> BatchResult:
        """Publish one batch of the sweep. MongoDB errors and :class:`Fenced` propagate; Kafka
        faults are reported in the result."""
        return await self._round(self._publish_once())

    async def publish_streamed(self, documents: Sequence[Mapping[str, Any]]) -> BatchResult:
        """Publish what the change stream delivered (inserted documents of this slot, in order of
        delivery), each when it is next in its aggregate's order. The documents not trusted are
        counted in ``deferred``: the sweep publishes them. Errors as :meth:`publish_once`."""
        return await self._round(self._publish_streamed(documents))

    async def _round(self, work: Awaitable[BatchResult]) -> BatchResult:
        try:
            result = await work
        except BaseException:
            await self._read_ahead.drop()
            raise
        if result.transient is not None or result.errors:
            # Resend from the oldest unmarked event next round, not from the read-ahead.
            await self._read_ahead.drop()
        return result

    async def _publish_once(self) -> BatchResult:
        batch, malformed = await self._read_ahead.next_batch()
        result = BatchResult(selected=len(batch) + len(malformed))
        if not batch and not malformed:
            return result
        await self._plan_send_and_settle(batch, malformed, result, streamed=False)
        return result

    async def _publish_streamed(self, documents: Sequence[Mapping[str, Any]]) -> BatchResult:
        events, deferred = accept_streamed(
            documents,
            self.slot,
            self._tenure_start,
            datetime.now(UTC),
            self._recent,
            timedelta(seconds=self._settings.clock_skew_seconds),
        )
        result = BatchResult(selected=len(events), deferred=deferred)
        if not events:
            return result
        # Decided about from now on, sent or held back: a later delivery of one is stale.
        self._recent.add(event.id for event in events)
        await self._plan_send_and_settle(events, [], result, streamed=True)
        return result

    async def _plan_send_and_settle(
        self,
        batch: list[OutboxEvent],
        malformed: list[Malformed],
        result: BatchResult,
        *,
        streamed: bool,
    ) -> None:
        """Put ``batch`` in order behind its unpublished predecessors, send, settle."""
        # No read at all for an aggregate's first event, or the next one after a version this holder
        # published; otherwise one query for the unpublished predecessors (sent first, in order)
        # and the Failed ones (nothing of their aggregate goes).
        known = self._versions.of(event.aggregate_id for event in batch)
        predecessors, failed = await find_predecessors(self._outbox, batch, malformed, known)
        for bad in malformed:
            if bad.aggregate_id is not None:
                # Its version cannot be trusted: the whole aggregate waits behind it (from the
                # next round on it is skipped like any aggregate with a Failed event).
                failed[bad.aggregate_id] = 0
        plan = plan_batch([*predecessors, *batch], failed)
        await self._send_and_settle(plan, malformed, result, streamed=streamed)

    async def _send_and_settle(
        self,
        plan: list[OutboxEvent],
        malformed: list[Malformed],
        result: BatchResult,
        *,
        streamed: bool,
    ) -> None:
        """Send ``plan`` in one Kafka transaction and settle the outcome (fenced)."""
        # Handled by this holder from now on, whatever the outcome: a stream delivery of any of
        # them later is stale (the sweep has the event in hand).
        self._recent.add([*(event.id for event in plan), *(bad.id for bad in malformed)])
        sent = [False] * len(plan)
        outcome: list[BaseException | None] = [None] * len(plan)
        placed: dict[int, Any] = {}  # plan index -> the RecordMetadata Kafka acknowledged
        if plan:
            try:
                await self._sender.send(plan, outcome, sent, placed)
            except Fenced:
                raise
            except Exception as exc:
                # The producer could not start, begin, send or commit: nothing of this batch
                # counts as published. A transaction in doubt is aborted by the next producer's
                # init. Not the events' fault: recorded as transient, so no event is ever parked
                # as Failed because of a batch-level problem.
                await self._sender.discard()
                if is_fencing(exc):
                    raise Fenced(repr(exc)) from exc
                fault = BatchFault(exc)
                for index in range(len(plan)):
                    if sent[index] or outcome[index] is None:
                        sent[index], outcome[index] = True, fault
        marked = acknowledged(outcome, sent)
        if marked and self._settings.failpoint == FAILPOINT_AFTER_KAFKA_ACK:
            log.critical(
                "failpoint after_kafka_ack: exiting before the Published mark of a "
                + ("stream-fed round" if streamed else "sweep round"),
                extra={"count": len(marked)},
            )
            os._exit(FAILPOINT_EXIT_CODE)
        verdicts = judge_failures(
            outcome, sent, self._settings.max_attempts, [event.attempts for event in plan]
        )
        published = [(plan[index], placed.get(index)) for index in marked]
        matched = await self._settler.settle(published, plan, outcome, verdicts, malformed)
        log_published(published)
        self._read_ahead.published_ids.update(plan[index].id for index in marked)
        if matched == len(published):
            self._versions.record(plan[index] for index in marked)
        else:
            # A mark found its event no longer Pending (published or parked meanwhile): what
            # this round sent says nothing sure about its aggregates' order.
            self._versions.forget(event.aggregate_id for event, _ in published)
        self._versions.forget(
            [
                *(plan[index].aggregate_id for index, v in verdicts.items() if v is Verdict.FAIL),
                *(bad.aggregate_id for bad in malformed),
            ]
        )
        if streamed:
            self.stream_fed += len(marked)
        result.published = len(marked)
        if plan:
            self._metrics.batch_size.observe(sum(sent))
        self._settler.report(plan, outcome, verdicts, malformed, result)


__all__ = ["BatchResult", "OutboxEvent", "Publisher", "published_fields"]
