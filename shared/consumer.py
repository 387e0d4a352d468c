"""The consumer loop shared by the inventory and email services.

A service supplies a parser (bytes -> event, raising ``PoisonMessage``) and a handler (event ->
side effect -> outcome label); this module does everything else, the same way for both:

* **Topics**: one subscription per topic (:class:`Route`: the event type it carries and its
  parser); the handler gets every topic's events and tells them apart by type. A record's DLQ
  is the DLQ of the topic it came from.
* **Poll and commit**: one consumer group, auto commit off, ``read_committed``. Partitions of a
  batch are processed concurrently, the records of one partition strictly in order. An offset
  is committed only after its record's work (or its DLQ write) is done; a crash re-delivers
  at most the records finished since the last commit, and the dedup keys absorb them.
* **Dedup**: the claim/mark protocol of :mod:`shared.idempotency`, one key space per service.
  The claim's lease is renewed while the handler runs, and the handler is bounded in time and
  cut when its lease cannot be kept (:mod:`shared.claim_lease`).
* **Replays**: a record carrying ``replayFor`` (a DLQ replay, see :mod:`shared.dlq`) is acted on
  only by the group it names; every other group skips it and commits past it.
* **Failures** (classified once by :func:`shared.errors.classify`): a poison message (or a record
  without an ``idempotencyKey`` header) goes straight to the DLQ; a transient fault is retried
  with backoff without limit and nothing past the record is committed; any other exception is
  tried ``max_unknown_attempts`` times, then the DLQ. The DLQ write is acknowledged by Kafka
  before the source offset is committed.
* **Rebalance**: on revocation no new record is started; the listener waits (bounded) for the
  records in flight and commits what is finished. A record finishing after that is not
  recorded, and a commit names only partitions assigned at that moment, so one lost partition
  never costs the others their offsets.
* **Drain**: when ``stop`` is set, no new record is started; the one in flight finishes (within
  the drain budget), finished offsets are committed, and the clients are closed.
* **Visibility**: Prometheus counters and a latency histogram, consumer lag per partition, and
  readiness checks for :class:`shared.health.HealthServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import Field
from redis.asyncio import Redis

from shared.backoff import wait_or_stop
from shared.claim_lease import run_under_lease
from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    ORDER_CANCELLED_TOPIC,
    ORDER_CREATED_TOPIC,
    Header,
    dlq_topic_for,
)
from shared.dlq import build_dlq_record, failure_reason, send_to_dlq
from shared.errors import FaultKind, PoisonMessage, TransientFault, classify
from shared.idempotency import Claim, IdempotencyStore
from shared.kafka import decode_headers, make_consumer, make_producer
from shared.lifecycle import FAILPOINT_EXIT_CODE
from shared.settings import ServiceSettings
from shared.tracing import record_span

log = logging.getLogger(__name__)

E = TypeVar("E")
Record: TypeAlias = "ConsumerRecord[Any, Any]"

# Failpoints (test-only crash points for the chaos suite). The process exits at that instant,
# without cleanup, exactly like a kill -9.
FAILPOINT_AFTER_SIDE_EFFECT = "after_side_effect"  # side effect done, `done` not written
FAILPOINT_AFTER_MARK_DONE = "after_mark_done"  # `done` written, offset not committed

# Outcome label of a record replayed from the DLQ for another consumer group (not ours to act on).
OUTCOME_OTHER_GROUPS_REPLAY = "skipped_other_groups_replay"


class ConsumerServiceSettings(ServiceSettings):
    """Knobs every consumer service has; each service subclasses it with its env prefix."""

    topic: str = ORDER_CREATED_TOPIC
    # Order services also follow cancellations; tests point both at private topics.
    cancelled_topic: str = ORDER_CANCELLED_TOPIC
    group_id: str = ""  # the subclass sets its contract group as the default
    # Longer than the slowest normal handling (MongoDB and SMTP time out within ~10 s), short
    # enough that an event whose consumer died mid-work is picked up again within a minute.
    claim_lease_seconds: int = Field(default=30, ge=1, le=3_600)
    # One handler attempt, whole (aiosmtplib's timeout is per SMTP command: six commands at 10 s
    # each would be a minute). The lease is renewed meanwhile, and the handler is cut sooner if
    # its lease cannot be kept (shared.claim_lease). A cut attempt is retried as transient.
    handler_timeout_seconds: float = Field(default=60.0, gt=0, le=3_600)
    # The budget for exceptions that are neither poison nor infrastructure.
    max_unknown_attempts: int = Field(default=3, ge=1, le=100)
    max_poll_records: int = Field(default=500, ge=1, le=10_000)
    # Partitions of one poll batch handled at the same time. Each one in flight is a record a
    # crash can catch mid-work, so a service whose side effect cannot be undone (email) sets 1
    # to keep its duplicate window at one message.
    max_concurrent_partitions: int = Field(default=6, ge=1, le=1_000)


@dataclass(frozen=True)
class Delivery:
    """Where a record came from, for the handler's logs and documents."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: Mapping[str, str]
    event_id: str
    # The dedup key the engine holds a live ``processing`` claim on while the handler runs.
    claim_key: str = ""


Parser = Callable[[bytes | None], E]
Handler = Callable[[E, Delivery], Awaitable[str]]
ReadyCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Route(Generic[E]):
    """What one subscribed topic carries: its event type (the dedup key space) and its parser."""

    event_type: str
    parse: Parser[E]


def order_routes(
    settings: ConsumerServiceSettings,
    parse_created: Parser[E],
    parse_cancelled: Parser[E],
) -> dict[str, Route[E]]:
    """The two order topics a service that follows an order's lifecycle subscribes to."""
    return {
        settings.topic: Route(EVENT_ORDER_CREATED, parse_created),
        settings.cancelled_topic: Route(EVENT_ORDER_CANCELLED, parse_cancelled),
    }


class ConsumerMetrics:
    """The Prometheus series of one consumer service (its own registry, no global state)."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = {"service": service}
        self.processed = Counter(
            "consumer_messages_processed_total",
            "Records handled to completion, by outcome",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "consumer_duplicates_skipped_total",
            "Records skipped because their key said done",
            ["service"],
            registry=self.registry,
        ).labels(**labels)
        self.retries = Counter(
            "consumer_retries_total",
            "Attempts repeated after a failure, by fault kind",
            ["service", "kind"],
            registry=self.registry,
        )
        self.dlq_routed = Counter(
            "consumer_dlq_routed_total",
            "Records written to the DLQ, by source topic and fault kind",
            ["service", "topic", "kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "consumer_processing_seconds",
            "Time from first attempt to done, per record",
            ["service"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ).labels(**labels)
        self.lag = Gauge(
            "consumer_lag",
            "Records still to read: last stable offset minus the position (which moves past "
            "transaction markers, so a caught-up partition shows 0)",
            ["service", "topic", "partition"],
            registry=self.registry,
        )
        self._service = service

    def outcome(self, outcome: str) -> None:
        self.processed.labels(service=self._service, outcome=outcome).inc()

    def retry(self, kind: FaultKind) -> None:
        self.retries.labels(service=self._service, kind=kind.value).inc()

    def dlq(self, topic: str, kind: FaultKind) -> None:
        self.dlq_routed.labels(service=self._service, topic=topic, kind=kind.value).inc()


class _Abandon(Exception):
    """Stop was requested while a record was still failing: leave it uncommitted."""


@dataclass
class _State:
    # Next offset to commit per partition: offset + 1 of the last finished record.
    finished: dict[TopicPartition, int] = field(default_factory=dict)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # Bumped when partitions are revoked. A batch belongs to the generation it was fetched in;
    # its records finishing later are not recorded (aiokafka lists the old assignment until the
    # new one arrives, so the assignment alone cannot tell).
    generation: int = 0
    # Set while the rebalance listener runs: no new record is started.
    revoking: bool = False


class IdempotentConsumer(Generic[E]):
    """Runs one service's consumer group until ``stop`` is set. See the module docstring."""

    def __init__(
        self,
        settings: ConsumerServiceSettings,
        *,
        service: str,
        redis: Redis,
        parse: Parser[E],
        handler: Handler[E],
        event_type: str = EVENT_ORDER_CREATED,
        metrics: ConsumerMetrics | None = None,
        routes: Mapping[str, Route[E]] | None = None,
    ) -> None:
        if not settings.group_id:
            raise ValueError("settings.group_id must name the consumer group")
        # Without routes: the one topic of the settings, carrying ``event_type``.
        self.routes: dict[str, Route[E]] = dict(
            routes or {settings.topic: Route(event_type, parse)}
        )
        self._partition_slots = asyncio.Semaphore(settings.max_concurrent_partitions)
        self.settings = settings
        self.service = service
        self.store = IdempotencyStore(redis, service, lease_seconds=settings.claim_lease_seconds)
        self.metrics = metrics or ConsumerMetrics(service)
        self._redis = redis
        self._handler = handler
        self._state = _State()
        self._state.idle.set()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stop = asyncio.Event()
        self.started = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain: finish, commit, close. Never raises for
        an infrastructure outage (it waits it out); raises only for a bug or fatal setup error."""
        self._stop = stop
        s = self.settings
        self._producer = make_producer(s.kafka_bootstrap_servers)
        self._consumer = make_consumer(
            s.kafka_bootstrap_servers, s.group_id, max_poll_records=s.max_poll_records
        )
        try:
            if not await self._start_clients():
                return
            self._consumer.subscribe(list(self.routes), listener=_Listener(self))
            self.started.set()
            log.info("consuming", extra={"topic": ",".join(self.routes), "group": s.group_id})
            while not stop.is_set():
                batch = await self._consumer.getmany(timeout_ms=500)
                if batch:
                    await self._run_batch(batch)
                    await self._commit_finished()
                await self._update_lag()
        finally:
            self.started.clear()
            await self._close()

    async def _start_clients(self) -> bool:
        """Start producer and consumer, waiting out a broker that is not up yet."""
        assert self._producer is not None and self._consumer is not None
        backoff = self.settings.backoff()
        for client in (self._producer, self._consumer):
            while True:
                try:
                    await client.start()
                    break
                except Exception as exc:
                    if classify(exc) is not FaultKind.TRANSIENT:
                        raise
                    log.warning("kafka not reachable, retrying", extra={"reason": repr(exc)})
                    if await wait_or_stop(self._stop, backoff.next_delay()):
                        return False
        return True

    async def _run_batch(self, batch: Mapping[TopicPartition, list[Record]]) -> None:
        """Process a batch; once stop is set, give it the drain budget and then cancel it."""
        self._state.idle.clear()
        try:
            task = asyncio.ensure_future(
                asyncio.gather(
                    *(self._process_partition(tp, records) for tp, records in batch.items())
                )
            )
            stop_wait = asyncio.ensure_future(self._stop.wait())
            try:
                waiters: set[asyncio.Future[Any]] = {task, stop_wait}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
            if not task.done():
                # Draining: the record in flight gets most of the budget; the rest is for the
                # commit and closing the clients.
                try:
                    await asyncio.wait_for(task, timeout=self.settings.drain_seconds * 0.7)
                except TimeoutError:
                    log.warning("drain budget exceeded, abandoning the record in flight")
            else:
                task.result()
        finally:
            self._state.idle.set()

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._commit_finished(), timeout=5)
        try:
            if self._consumer is not None:
                await self._consumer.stop()
        finally:
            if self._producer is not None:
                with contextlib.suppress(Exception):
                    await self._producer.stop()
        log.info("consumer stopped", extra={"group": self.settings.group_id})

    # ------------------------------------------------------------------ processing

    async def _process_partition(self, tp: TopicPartition, records: list[Record]) -> None:
        async with self._partition_slots:
            await self._process_partition_records(tp, records)

    async def _process_partition_records(self, tp: TopicPartition, records: list[Record]) -> None:
        generation = self._state.generation
        for record in records:
            if self._stop.is_set() or self._state.revoking:
                return  # draining, or a rebalance is taking the partitions: not started
            if self._state.generation != generation:
                return  # revoked since this batch was fetched: someone else's now
            try:
                # A child of the record's traceparent: the trace of the order it belongs to.
                with record_span(
                    self.service,
                    record.headers,
                    record.topic,
                    record.partition,
                    record.offset,
                ):
                    await self._process_record(record)
            except _Abandon:
                return
            if self._state.generation != generation:
                # Finished after the listener gave the partition up: it must not come back
                # into the offsets to commit (a redelivery elsewhere is skipped by dedup).
                return
            self._state.finished[tp] = record.offset + 1

    async def _process_record(self, record: Record) -> None:
        """Handle one record to a final state: done, duplicate, or in the DLQ.

        Raises ``_Abandon`` if stop is requested while it keeps failing transiently.
        """
        started = time.perf_counter()
        backoff = self.settings.backoff()
        unknown_attempts = 0
        extra = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        replay_for = decode_headers(record.headers).get(Header.REPLAY_FOR)
        if replay_for is not None and replay_for != self.settings.group_id:
            # An operator replayed another group's failure: it is that group's copy alone (our
            # dedup key may have expired since we handled the event). Skipped, then committed.
            self.metrics.outcome(OUTCOME_OTHER_GROUPS_REPLAY)
            log.info("replay for another group skipped", extra={**extra, "group": replay_for})
            return
        while True:
            try:
                outcome = await self._attempt(record)
            except _Abandon:
                raise
            except Exception as exc:
                kind = classify(exc)
                reason = failure_reason(exc)
                if kind is FaultKind.PERMANENT:
                    await self._dead_letter(record, reason, kind, retry_count=unknown_attempts)
                    return
                if kind is FaultKind.UNKNOWN:
                    unknown_attempts += 1
                    if unknown_attempts >= self.settings.max_unknown_attempts:
                        log.exception("giving up after %d attempts", unknown_attempts, extra=extra)
                        await self._dead_letter(
                            record, reason, kind, retry_count=unknown_attempts - 1
                        )
                        return
                self.metrics.retry(kind)
                delay = backoff.next_delay()
                log.warning(
                    "attempt failed, retrying",
                    extra={
                        **extra,
                        "reason": reason,
                        "fault": kind.value,
                        "delay": round(delay, 3),
                        "attempt": unknown_attempts,
                    },
                )
                if await wait_or_stop(self._stop, delay):
                    raise _Abandon() from exc
                continue
            self.metrics.outcome(outcome)
            self.metrics.latency.observe(time.perf_counter() - started)
            return

    async def _attempt(self, record: Record) -> str:
        """One try: validate, claim, handle, mark. Returns the outcome label."""
        headers = decode_headers(record.headers)
        event_id = headers.get(Header.IDEMPOTENCY_KEY, "").strip()
        if not event_id:
            raise PoisonMessage(f"missing {Header.IDEMPOTENCY_KEY} header")
        route = self.routes[record.topic]
        # Parse before claiming: a poison record never touches Redis.
        event = route.parse(record.value)
        key = self.store.key(route.event_type, event_id)
        extra = {
            "event_id": event_id,
            # The key of every record on our topics is the order id (the outbox aggregate id).
            "order_id": record.key.decode("utf-8", "replace") if record.key else None,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "group": self.settings.group_id,
        }
        claim = await self.store.claim(key)
        if claim is Claim.DONE:
            self.metrics.duplicates.inc()
            log.info("duplicate skipped", extra=extra)
            return "duplicate"
        if claim is Claim.BUSY:
            raise TransientFault(f"{key} is being processed by another instance")
        delivery = Delivery(
            record.topic, record.partition, record.offset, record.key, headers, event_id, key
        )
        try:
            outcome = await run_under_lease(
                self.store,
                key,
                self._handler(event, delivery),
                timeout_seconds=self.settings.handler_timeout_seconds,
            )
        except Exception:
            # Let the retry (here, or elsewhere after a rebalance) claim it at once. If Redis is
            # away the lease simply expires; our own retry recognises its own lease.
            with contextlib.suppress(Exception):
                await self.store.release(key)
            raise
        self._failpoint(FAILPOINT_AFTER_SIDE_EFFECT)
        await self._mark_done(key)
        self._failpoint(FAILPOINT_AFTER_MARK_DONE)
        log.info("processed", extra={**extra, "status": outcome})
        return outcome

    async def _mark_done(self, key: str) -> None:
        """Write ``done`` after the side effect, retrying only this write: re-running the
        handler because Redis blinked would repeat the side effect (a second email)."""
        backoff = self.settings.backoff()
        while True:
            try:
                await self.store.mark_done(key)
                return
            except Exception as exc:
                if classify(exc) is FaultKind.PERMANENT:
                    raise
                self.metrics.retry(FaultKind.TRANSIENT)
                log.warning("could not mark done, retrying", extra={"reason": repr(exc)})
                if await wait_or_stop(self._stop, backoff.next_delay()):
                    raise _Abandon() from exc

    async def _dead_letter(
        self, record: Record, reason: str, kind: FaultKind, *, retry_count: int
    ) -> None:
        """Write the DLQ record and wait for its ack; a Kafka outage is waited out, not lost."""
        assert self._producer is not None
        dlq_record = build_dlq_record(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=record.headers,
            reason=reason,
            retry_count=retry_count,
            consumer_group=self.settings.group_id,
        )
        backoff = self.settings.backoff()
        while True:
            try:
                await send_to_dlq(self._producer, dlq_topic_for(record.topic), dlq_record)
                break
            except Exception as exc:
                self.metrics.retry(FaultKind.TRANSIENT)
                log.warning("DLQ write failed, retrying", extra={"reason": repr(exc)})
                if await wait_or_stop(self._stop, backoff.next_delay()):
                    raise _Abandon() from exc
        self.metrics.dlq(record.topic, kind)
        self.metrics.outcome("dead_lettered")
        log.warning(
            "routed to DLQ",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": reason,
                "fault": kind.value,
                "group": self.settings.group_id,
            },
        )

    # ------------------------------------------------------------------ offsets

    async def _commit_finished(self, only: set[TopicPartition] | None = None) -> None:
        """Commit the finished offsets (all, or those of ``only``) of partitions assigned to us
        now; offsets of partitions no longer assigned are dropped (not ours to commit). A
        refused or failed commit keeps the rest for the next try."""
        if self._consumer is None:
            return
        assigned = self._consumer.assignment()
        for tp in [tp for tp in self._state.finished if tp not in assigned]:
            del self._state.finished[tp]
        offsets = {
            tp: off for tp, off in self._state.finished.items() if only is None or tp in only
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance is under way: the listener commits (or drops) what it revokes.
            log.warning("commit refused after rebalance", extra={"reason": repr(exc)})
            return
        except Exception as exc:
            log.warning("commit failed, will retry", extra={"reason": repr(exc)})
            return
        for tp, off in offsets.items():
            if self._state.finished.get(tp) == off:
                del self._state.finished[tp]

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Rebalance: start nothing new, let the records in flight finish (bounded), commit the
        revoked partitions, and forget them, including records that finish later."""
        self._state.revoking = True
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state.idle.wait(), timeout=self.settings.drain_seconds)
            await self._commit_finished(only=set(revoked))
        finally:
            self._state.generation += 1
            self._state.revoking = False
        for tp in revoked:
            self._state.finished.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(self.service, tp.topic, str(tp.partition))
        log.info("partitions revoked", extra={"count": len(revoked)})

    async def _update_lag(self) -> None:
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            end = self._consumer.last_stable_offset(tp)
            if end is None:
                end = self._consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = await self._consumer.position(tp)
            except Exception:
                continue
            labels = {"service": self.service, "topic": tp.topic, "partition": str(tp.partition)}
            self.metrics.lag.labels(**labels).set(max(0, end - position))

    # ------------------------------------------------------------------ helpers

    def _failpoint(self, name: str) -> None:
        if self.settings.failpoint == name:
            log.warning("failpoint hit, exiting", extra={"failpoint": name})
            logging.shutdown()
            os._exit(FAILPOINT_EXIT_CODE)

    async def ready(self) -> dict[str, bool]:
        """Readiness: the consumer is running and Redis answers."""
        redis_ok = False
        with contextlib.suppress(Exception):
            redis_ok = bool(await self._redis.ping())
        return {"kafka": self.started.is_set(), "redis": redis_ok}


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: IdempotentConsumer[Any]) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions assigned",
            extra={
                "count": len(assigned),
                "group": self._owner.settings.group_id,
            },
        )


async def run_consumer_service(
    settings: ConsumerServiceSettings,
    *,
    service: str,
    parse: Parser[E],
    handler: Handler[E],
    redis: Redis,
    extra_ready: Mapping[str, ReadyCheck] | None = None,
    stop: asyncio.Event | None = None,
    routes: Mapping[str, Route[E]] | None = None,
) -> int:
    """Run a consumer service until SIGTERM/SIGINT (or ``stop``): health server, consumer loop,
    drain. Returns the exit code (0 after a clean drain). The caller owns ``redis`` and the
    clients its handler uses, and closes them after this returns.
    """
    from shared.health import HealthServer
    from shared.lifecycle import stop_event_on_signals

    stop = stop or stop_event_on_signals()
    consumer = IdempotentConsumer(
        settings, service=service, redis=redis, parse=parse, handler=handler, routes=routes
    )

    async def ready() -> dict[str, bool]:
        checks = await consumer.ready()
        for name, check in (extra_ready or {}).items():
            try:
                checks[name] = await check()
            except Exception:
                checks[name] = False
        return checks

    health = HealthServer(settings.host, settings.port, ready, consumer.metrics.registry)
    await health.start()
    log.info("health server listening", extra={"address": f"{settings.host}:{health.port}"})
    try:
        await consumer.run(stop)
    finally:
        await health.stop()
    return 0
