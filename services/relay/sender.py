"""Sending a planned round to Kafka: the slot's producer and, with a ``transactional_id`` (the
default), one Kafka transaction per round.

Every holder of a slot uses the slot's transactional id (``<id>-slot-<n>``), so a new holder's
producer bumps the producer epoch: the broker aborts a zombie holder's open transaction and
rejects its later ones. A fencing error from anywhere (a producer call or a record's delivery)
raises :class:`Fenced` at once. A round whose lease lapsed while its records were in flight is
aborted, never committed: a deposed holder publishes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from opentelemetry.trace import Span

from services.relay.lease import Fenced, Lease, transactional_id_for
from services.relay.outbox_event import OutboxEvent
from services.relay.rules import FENCED_ERRORS, Collateral, classify_publish_error, is_fencing
from services.relay.settings import RelaySettings
from shared.contracts import Header
from shared.errors import FaultKind
from shared.kafka import REQUEST_TIMEOUT_MS, encode_headers, make_producer
from shared.tracing import batch_span, end_span, event_span

# Sending or committing never takes longer than the producer's own request timeout plus slack;
# past that the producer's state is unknown and it is replaced.
KAFKA_DEADLINE_SECONDS = REQUEST_TIMEOUT_MS / 1000 + 5


class KafkaSender:
    """The Kafka side of one slot's publisher: its producer and the round's transaction."""

    def __init__(
        self,
        settings: RelaySettings,
        lease: Lease,
        producer_factory: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        self._settings = settings
        self._lease = lease
        self._producer_factory = producer_factory or self.default_producer
        self._producer: AIOKafkaProducer | None = None

    @property
    def slot(self) -> int:
        return self._lease.slot

    def default_producer(self) -> AIOKafkaProducer:
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

    async def discard(self) -> None:
        """Throw the producer away: after a failed transaction or a timeout its state is unknown.

        A fresh producer with the same transactional id aborts whatever the old one left open.
        """
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    async def send(
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
                    await self.discard()
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
                await self.discard()
                for index in futures:
                    if outcome[index] is None:
                        outcome[index] = Collateral()
                return
            if not self._lease.is_held():
                # Our lease ran out while the batch was in flight (the process was paused, or
                # the sends were slow): a standby may lead already and its producer may not have
                # fenced ours yet. Committing now would publish as a deposed leader; abort, and
                # leave the events Pending for whoever leads.
                with contextlib.suppress(Exception):
                    await self._guard(producer.abort_transaction())
                await self.discard()
                raise Fenced("the lease lapsed before the commit; batch aborted")
            await self._guard(producer.commit_transaction())

    async def _guard(self, awaitable: Any) -> Any:
        """Await a producer call within the Kafka deadline; translate fencing errors."""
        try:
            return await asyncio.wait_for(awaitable, KAFKA_DEADLINE_SECONDS)
        except FENCED_ERRORS as exc:
            await self.discard()
            raise Fenced(repr(exc)) from exc
