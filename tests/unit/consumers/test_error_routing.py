"""Error routing of the shared consumer loop, with a fake Redis and a fake DLQ producer:
poison goes straight to the DLQ, transient faults are retried without limit and never
dead-lettered, unknown failures get three attempts, and the side effect runs once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fakeredis
import pytest
import redis.exceptions
from aiokafka import ConsumerRecord

from shared.consumer import ConsumerServiceSettings, Delivery, IdempotentConsumer, _Abandon
from shared.contracts import ORDER_CREATED_DLQ_TOPIC, ORDER_CREATED_TOPIC, Header
from shared.events import OrderCreated, parse_order_created
from tests.waiting import wait_until


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, dict[str, str]]] = []

    async def send_and_wait(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        self.sent.append((topic, key, value, {k: v.decode() for k, v in headers}))


class Handler:
    """Fails with the queued exceptions, then succeeds; counts the side effects."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.effects = 0

    async def __call__(self, event: OrderCreated, delivery: Delivery) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.effects += 1
        return "ok"


def _settings() -> ConsumerServiceSettings:
    return ConsumerServiceSettings(
        group_id="unit-group", backoff_initial_seconds=0.001, backoff_max_seconds=0.002
    )


def _consumer(handler: Handler) -> tuple[IdempotentConsumer[OrderCreated], FakeProducer]:
    consumer = IdempotentConsumer(
        _settings(),
        service="unit",
        redis=fakeredis.FakeAsyncRedis(),
        parse=parse_order_created,
        handler=handler,
    )
    producer = FakeProducer()
    consumer._producer = producer
    return consumer, producer


GOOD = json.dumps(
    {
        "schemaVersion": 1,
        "orderId": "o-1",
        "userId": "u-1",
        "customerEmail": "a@example.com",
        "total": "5.00",
        "items": [{"sku": "SKU-1", "quantity": 1, "unitPrice": "5.00"}],
        "createdAt": "2025-01-01T00:00:00Z",
    }
).encode()


def _record(
    value: bytes | None = GOOD,
    event_id: str | None = "evt-1",
    offset: int = 7,
    replay_for: str | None = None,
) -> Any:
    headers = [(Header.EVENT_TYPE, b"OrderCreated")]
    if event_id is not None:
        headers.append((Header.IDEMPOTENCY_KEY, event_id.encode()))
    if replay_for is not None:
        headers.append((Header.REPLAY_FOR, replay_for.encode()))
    return ConsumerRecord(
        topic=ORDER_CREATED_TOPIC,
        partition=2,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"o-1",
        value=value,
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=len(value or b""),
        headers=tuple(headers),
    )


@pytest.mark.parametrize(
    ("value", "event_id", "reason_part"),
    [
        (b"{not json", "e", "not JSON"),
        (b"[1, 2]", "e", "not an object"),
        (json.dumps({"schemaVersion": 1}).encode(), "e", "schema violation"),
        (GOOD.replace(b'"quantity": 1', b'"quantity": "1"'), "e", "items.0.quantity"),
        (GOOD.replace(b'"schemaVersion": 1', b'"schemaVersion": 9'), "e", "unknown schemaVersion"),
        (GOOD, None, "missing idempotencyKey header"),
    ],
)
async def test_poison_goes_to_the_dlq_at_once_with_its_reason(
    value: bytes, event_id: str | None, reason_part: str
) -> None:
    handler = Handler()
    consumer, producer = _consumer(handler)
    await consumer._process_record(_record(value, event_id))
    assert handler.calls == 0
    [(topic, key, sent_value, headers)] = producer.sent
    assert topic == ORDER_CREATED_DLQ_TOPIC
    assert (key, sent_value) == (b"o-1", value)
    assert headers[Header.FAILURE_REASON].startswith("PoisonMessage: ")
    assert reason_part in headers[Header.FAILURE_REASON]
    assert headers[Header.RETRY_COUNT] == "0"
    assert headers[Header.ORIGINAL_TOPIC] == ORDER_CREATED_TOPIC
    assert (headers[Header.ORIGINAL_PARTITION], headers[Header.ORIGINAL_OFFSET]) == ("2", "7")
    assert headers[Header.CONSUMER_GROUP] == "unit-group"
    assert headers[Header.EVENT_TYPE] == "OrderCreated"
    assert Header.FAILED_AT in headers


async def test_transient_faults_are_retried_without_limit_and_never_dead_lettered() -> None:
    outage = [redis.exceptions.ConnectionError("down")] * 8 + [TimeoutError()] * 4
    handler = Handler(*outage)
    consumer, producer = _consumer(handler)
    await consumer._process_record(_record())
    assert producer.sent == []
    assert handler.effects == 1
    assert handler.calls == 13


async def test_unknown_failures_get_three_attempts_then_the_dlq() -> None:
    handler = Handler(*[RuntimeError("bug")] * 5)
    consumer, producer = _consumer(handler)
    await consumer._process_record(_record())
    assert handler.calls == 3
    [(_, _, _, headers)] = producer.sent
    assert headers[Header.FAILURE_REASON] == "RuntimeError: bug"
    assert headers[Header.RETRY_COUNT] == "2"


async def test_unknown_failure_that_recovers_within_budget_is_processed_once() -> None:
    handler = Handler(RuntimeError("flaky"), RuntimeError("flaky"))
    consumer, producer = _consumer(handler)
    await consumer._process_record(_record())
    assert producer.sent == []
    assert handler.effects == 1


async def test_redelivery_after_success_is_skipped_as_a_duplicate() -> None:
    handler = Handler()
    consumer, _ = _consumer(handler)
    await consumer._process_record(_record(offset=1))
    await consumer._process_record(_record(offset=2))
    assert handler.effects == 1
    assert consumer.metrics.duplicates._value.get() == 1


async def test_failed_release_while_redis_is_down_does_not_repeat_a_finished_side_effect() -> None:
    """If Redis fails after the side effect, only the done marker is retried: the handler
    (an email) is not run a second time."""
    handler = Handler()
    consumer, _ = _consumer(handler)
    real_mark = consumer.store.mark_done
    failures = [redis.exceptions.ConnectionError("down")] * 3

    async def flaky_mark(key: str) -> None:
        if failures:
            raise failures.pop()
        await real_mark(key)

    consumer.store.mark_done = flaky_mark  # type: ignore[method-assign]
    await consumer._process_record(_record())
    assert handler.effects == 1
    assert await consumer.store.claim(consumer.store.key("OrderCreated", "evt-1")) == "done"


async def test_stop_during_a_transient_outage_abandons_the_record_uncommitted() -> None:
    handler = Handler(*[ConnectionError("down")] * 1000)
    consumer, producer = _consumer(handler)
    stop = asyncio.Event()
    consumer._stop = stop
    task = asyncio.create_task(consumer._process_record(_record()))
    await wait_until(lambda: handler.calls >= 3, timeout=5, message="a few failed attempts")
    stop.set()
    with pytest.raises(_Abandon):
        await asyncio.wait_for(task, timeout=2)
    assert producer.sent == []


async def test_a_replay_for_another_group_is_skipped_without_touching_redis() -> None:
    handler = Handler()
    consumer, producer = _consumer(handler)
    await consumer._process_record(_record(replay_for="some-other-group"))
    assert (handler.calls, producer.sent) == (0, [])
    assert await consumer.store.claim(consumer.store.key("OrderCreated", "evt-1")) == "claimed"


async def test_a_replay_for_this_group_is_processed() -> None:
    handler = Handler()
    consumer, _ = _consumer(handler)
    await consumer._process_record(_record(replay_for="unit-group"))
    assert handler.effects == 1
