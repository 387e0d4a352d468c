"""Which offsets the consumer engine commits around a rebalance, with a fake Kafka consumer that
refuses what aiokafka refuses (a partition not assigned): only the current assignment's offsets
are committed, a refused commit loses no other partition's offsets, and a record that finishes
after its partition was revoked is not recorded as committable."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError

from shared.consumer import ConsumerServiceSettings, Delivery, IdempotentConsumer
from shared.contracts import ORDER_CREATED_TOPIC
from shared.events import OrderCreated, parse_order_created
from tests.unit.consumers.test_error_routing import _record
from tests.waiting import wait_until

P0 = TopicPartition(ORDER_CREATED_TOPIC, 0)
P1 = TopicPartition(ORDER_CREATED_TOPIC, 1)
P2 = TopicPartition(ORDER_CREATED_TOPIC, 2)


class FakeKafkaConsumer:
    def __init__(self, *assigned: TopicPartition) -> None:
        self.assigned = set(assigned)
        self.commits: list[dict[TopicPartition, int]] = []
        self.refuse_next: Exception | None = None

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refuse_next is not None:
            error, self.refuse_next = self.refuse_next, None
            raise error
        for tp in offsets:
            if tp not in self.assigned:
                raise IllegalStateError(f"Partition {tp} is not assigned")
        self.commits.append(dict(offsets))


class SlowHandler:
    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.entered = 0

    async def __call__(self, event: OrderCreated, delivery: Delivery) -> str:
        self.entered += 1
        await self.opened.wait()
        return "ok"


def _engine(kafka: FakeKafkaConsumer, handler: Any = None) -> IdempotentConsumer[OrderCreated]:
    settings = ConsumerServiceSettings(group_id="unit-group", drain_seconds=0.2)
    consumer = IdempotentConsumer(
        settings,
        service="unit",
        redis=fakeredis.FakeAsyncRedis(),
        parse=parse_order_created,
        handler=handler or SlowHandler(),
    )
    consumer._consumer = kafka
    return consumer


async def test_a_commit_names_only_partitions_of_the_current_assignment() -> None:
    kafka = FakeKafkaConsumer(P1, P2)
    consumer = _engine(kafka)
    consumer._state.finished.update({P0: 5, P1: 7, P2: 9})  # P0 moved to another instance
    await consumer._commit_finished()
    assert kafka.commits == [{P1: 7, P2: 9}]
    assert consumer._state.finished == {}


async def test_a_refused_commit_keeps_the_offsets_of_partitions_still_assigned() -> None:
    kafka = FakeKafkaConsumer(P0, P1)
    kafka.refuse_next = IllegalStateError("No partitions assigned")
    consumer = _engine(kafka)
    consumer._state.finished.update({P0: 5, P1: 7})
    await consumer._commit_finished()
    assert kafka.commits == []
    await consumer._commit_finished()  # the next round commits them
    assert kafka.commits == [{P0: 5, P1: 7}]


async def test_a_record_finishing_after_its_partition_was_revoked_is_not_recorded() -> None:
    """The rebalance listener waits (bounded) for the record in flight, commits and gives the
    partition up; the record then finishes. aiokafka still lists the old assignment until the
    new one arrives, so the engine itself must remember that the partition is gone."""
    kafka = FakeKafkaConsumer(P0, P1)
    handler = SlowHandler()
    consumer = _engine(kafka, handler)
    batch = asyncio.create_task(consumer._run_batch({P0: [_record(offset=3)]}))
    await wait_until(lambda: handler.entered == 1, timeout=5, message="record in flight")
    await consumer.on_revoked({P0, P1})  # gives up waiting after drain_seconds
    handler.opened.set()
    await asyncio.wait_for(batch, timeout=5)
    assert P0 not in consumer._state.finished
    await consumer._commit_finished()
    assert kafka.commits == []
