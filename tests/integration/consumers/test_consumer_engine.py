"""The shared consumer engine (shared/consumer.py) with a handler of the test's own, against the
embedded Kafka and Redis: what it promises about claim leases, offsets and DLQ writes whatever
the handler does (the services' handlers are tested in the other files)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

from shared.consumer import ConsumerServiceSettings, Delivery, IdempotentConsumer
from shared.contracts import EVENT_ORDER_CREATED, Header, dlq_topic_for, idempotency_key
from shared.dlq import read_dlq
from shared.errors import PoisonMessage
from shared.idempotency import Claim, IdempotencyStore
from shared.kafka import ensure_topics, make_producer
from shared.redis import make_redis
from stack import Stack
from tests.background import finish_service_tasks
from tests.integration.consumers.conftest import event_headers
from tests.waiting import wait_until

TIMEOUT = 60
SERVICE = "engine-test"
LEASE_SECONDS = 2


def _parse(value: bytes | None) -> str:
    return (value or b"").decode()


@dataclass
class Engine:
    """One test's topic, group and consumer instances on the shared stack."""

    stack: Stack
    topic: str
    group: str
    producer: AIOKafkaProducer
    redis: Redis
    tasks: dict[str, asyncio.Task[int]] = field(default_factory=dict)
    stops: list[asyncio.Event] = field(default_factory=list)

    def settings(self, **overrides: Any) -> ConsumerServiceSettings:
        c = self.stack.config
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": c.kafka_bootstrap,
            "redis_url": c.redis_url,
            "topic": self.topic,
            "group_id": self.group,
            "claim_lease_seconds": LEASE_SECONDS,
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.5,
            "drain_seconds": 10.0,
            **overrides,
        }
        return ConsumerServiceSettings(**values)

    def start(
        self, name: str, handler: Callable[[str, Delivery], Any], **overrides: Any
    ) -> IdempotentConsumer[str]:
        consumer = IdempotentConsumer(
            self.settings(**overrides),
            service=SERVICE,
            redis=self.redis,
            parse=_parse,
            handler=handler,
        )
        stop = asyncio.Event()

        async def run() -> int:
            await consumer.run(stop)
            return 0

        self.tasks[name] = asyncio.create_task(run())
        self.stops.append(stop)
        return consumer

    async def send(self, value: str, *, partition: int = 0, topic: str | None = None) -> str:
        event_id = uuid.uuid4().hex
        await self.producer.send_and_wait(
            topic or self.topic,
            key=event_id.encode(),
            value=value.encode(),
            partition=partition,
            headers=event_headers(event_id, event_id),
        )
        return event_id

    def key(self, event_id: str) -> str:
        return idempotency_key(SERVICE, EVENT_ORDER_CREATED, event_id)

    async def done(self, event_id: str) -> bool:
        return bool(await self.redis.get(self.key(event_id)) == b"done")


@pytest.fixture
async def engine(stack: Stack) -> AsyncIterator[Engine]:
    suffix = uuid.uuid4().hex[:10]
    topic = f"test.engine.{suffix}"
    c = stack.config
    await ensure_topics(c.kafka_bootstrap, [topic, dlq_topic_for(topic)], 2)
    producer = make_producer(c.kafka_bootstrap)
    await producer.start()
    # Waits until the broker's metadata lists the new topic, so a consumer subscribing next
    # sees its partitions at once.
    await producer.partitions_for(topic)
    redis = make_redis(c.redis_url)
    e = Engine(stack, topic, f"engine-{suffix}", producer, redis)
    try:
        yield e
    finally:
        for stop in e.stops:
            stop.set()
        try:
            await finish_service_tasks(e.tasks, timeout=30)
        finally:
            await producer.stop()
            await redis.aclose()


class Gate:
    """A handler that blocks until the test opens it; counts entries, effects, cancellations."""

    def __init__(self, *, hang_first: bool = False) -> None:
        self.opened = asyncio.Event()
        self.entered: list[Delivery] = []
        self.effects = 0
        self.cancelled = 0
        self._hang_first = hang_first

    async def __call__(self, event: str, delivery: Delivery) -> str:
        self.entered.append(delivery)
        try:
            if self._hang_first and len(self.entered) == 1:
                await asyncio.Event().wait()  # a server that never answers
            await self.opened.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.effects += 1
        return "ok"


async def test_a_handler_outliving_its_claim_lease_keeps_the_claim(engine: Engine) -> None:
    """A slow side effect (SMTP that takes longer than the lease) renews its lease: another
    instance asking for the key meanwhile is told busy, so it can never do the work twice."""
    gate = Gate()
    engine.start("a", gate)
    event_id = await engine.send("slow")
    await wait_until(lambda: gate.entered, timeout=TIMEOUT, message="the handler started")
    started = time.monotonic()
    rival = IdempotencyStore(engine.redis, SERVICE, lease_seconds=LEASE_SECONDS, owner="rival")
    # The slow handler itself (not a synchronisation): three leases long, asking all along.
    while time.monotonic() - started < 3 * LEASE_SECONDS:
        assert await rival.claim(engine.key(event_id)) is Claim.BUSY
        await asyncio.sleep(LEASE_SECONDS / 4)
    gate.opened.set()
    await wait_until(lambda: engine.done(event_id), timeout=TIMEOUT, message="done")
    assert (gate.effects, gate.cancelled) == (1, 0)


async def test_a_handler_that_never_returns_is_cut_at_its_timeout_and_retried(
    engine: Engine,
) -> None:
    """aiosmtplib's timeout is per command; the engine bounds the whole handler, so a server that
    stops answering mid-conversation is a transient fault, retried, not a stuck partition."""
    gate = Gate(hang_first=True)
    gate.opened.set()
    engine.start("a", gate, handler_timeout_seconds=1.0)
    event_id = await engine.send("hangs once")
    await wait_until(lambda: engine.done(event_id), timeout=TIMEOUT, message="done")
    assert (len(gate.entered), gate.cancelled, gate.effects) == (2, 1, 1)


async def test_a_handler_whose_lease_was_taken_is_cancelled_before_it_finishes(
    engine: Engine,
) -> None:
    """If the lease is lost anyway (Redis restarted empty, someone else claimed it), the handler
    notices at its next renewal and stops instead of racing the new owner to the side effect."""
    gate = Gate()
    engine.start("a", gate)
    event_id = await engine.send("lease lost")
    await wait_until(lambda: gate.entered, timeout=TIMEOUT, message="the handler started")
    key = engine.key(event_id)
    await engine.redis.set(key, b"processing:rival", ex=60)  # what a rival's claim leaves
    await wait_until(lambda: gate.cancelled == 1, timeout=TIMEOUT, message="handler cancelled")
    assert gate.effects == 0
    await engine.redis.delete(key)  # the rival gave up: our retry claims it and does the work
    gate.opened.set()
    await wait_until(lambda: engine.done(event_id), timeout=TIMEOUT, message="done")
    assert gate.effects == 1


async def test_a_rebalance_mid_batch_commits_only_partitions_still_owned(engine: Engine) -> None:
    """A second member joins while a record of each partition is in flight; the rebalance
    listener gives up waiting, the group moves one partition away, then both records finish.
    Every commit names only partitions of the instance's assignment at that moment (the old
    engine re-added the lost partition and its commit was refused, dropping the kept one's
    offset with it), and the kept partition's committed offset reaches its end."""
    gate = Gate()
    first = await engine.send("p0", partition=0)
    second = await engine.send("p1", partition=1)
    a = engine.start("a", gate, drain_seconds=1.0)
    await wait_until(lambda: len(gate.entered) == 2, timeout=TIMEOUT, message="both in flight")
    kafka = a._consumer
    assert kafka is not None
    commits: list[tuple[set[TopicPartition], set[TopicPartition]]] = []
    real_commit = kafka.commit

    async def recording_commit(offsets: dict[TopicPartition, int]) -> None:
        commits.append((set(offsets), kafka.assignment()))
        await real_commit(offsets)

    kafka.commit = recording_commit
    other = AIOKafkaConsumer(
        engine.topic,
        bootstrap_servers=engine.stack.config.kafka_bootstrap,
        group_id=engine.group,
        enable_auto_commit=False,
    )
    await other.start()
    try:
        await wait_until(
            lambda: len(kafka.assignment()) == 1 and len(other.assignment()) == 1,
            timeout=TIMEOUT,
            message="one partition each",
        )
        [kept] = kafka.assignment()
        gate.opened.set()
        for event_id in (first, second):
            await wait_until(partial(engine.done, event_id), timeout=TIMEOUT, message="done")

        async def kept_committed() -> bool:
            return bool(await kafka.committed(kept) == 1)

        await wait_until(kept_committed, timeout=TIMEOUT, message="kept partition committed")
    finally:
        await other.stop()
    for named, assigned in commits:
        assert named <= assigned, f"committed {named} while assigned {assigned}"


async def test_a_failing_dlq_write_is_retried_and_the_offset_waits_for_it(engine: Engine) -> None:
    """The DLQ write fails (its topic does not exist yet: Kafka refuses every send) and later
    succeeds. Until Kafka has acknowledged the DLQ copy, the poison record's offset is not
    committed and nothing behind it is; then the copy is in the DLQ once and the record behind
    the poison is processed. Nothing is lost on the way."""
    topic = f"{engine.topic}.no-dlq-yet"
    c = engine.stack.config
    await ensure_topics(c.kafka_bootstrap, [topic], 1)  # the DLQ topic comes later
    gate = Gate()
    gate.opened.set()
    # Produced first: a consumer subscribing before the broker's metadata lists a topic this
    # new would wait minutes (metadata_max_age) to see it.
    poison_id = await engine.send("poison", topic=topic)
    good_id = await engine.send("good", topic=topic)
    a = engine.start("a", _poison_or(gate), topic=topic)
    retries = a.metrics.retries.labels(service=SERVICE, kind="transient")
    await wait_until(lambda: retries._value.get() >= 1, timeout=TIMEOUT, message="a DLQ failure")
    assert a._consumer is not None
    tp = TopicPartition(topic, 0)
    assert await a._consumer.committed(tp) is None  # nothing committed past the poison
    assert gate.entered == []  # and the record behind it waits its turn

    await ensure_topics(c.kafka_bootstrap, [dlq_topic_for(topic)], 1)
    await wait_until(partial(engine.done, good_id), timeout=TIMEOUT, message="good processed")

    async def committed_past_both() -> bool:
        assert a._consumer is not None
        return bool(await a._consumer.committed(tp) == 2)

    await wait_until(committed_past_both, timeout=TIMEOUT, message="offsets committed")
    copies = await read_dlq(c.kafka_bootstrap, dlq_topic_for(topic))
    assert [r.headers.get(Header.IDEMPOTENCY_KEY) for r in copies] == [poison_id]
    assert copies[0].headers[Header.FAILURE_REASON].startswith("PoisonMessage: ")
    assert gate.effects == 1


def _poison_or(gate: Gate) -> Callable[[str, Delivery], Any]:
    async def handle(event: str, delivery: Delivery) -> str:
        if event == "poison":
            raise PoisonMessage("the test's poison")
        return str(await gate(event, delivery))

    return handle
