"""Kafka plumbing: producer and consumer factories, topic bootstrap, header helpers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.contracts import ALL_TOPICS, TOPIC_PARTITIONS

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# Every Kafka request must fail within this long when the broker is away.
REQUEST_TIMEOUT_MS = 10_000


def make_producer(
    bootstrap_servers: str,
    *,
    transactional_id: str | None = None,
    linger_ms: int = 5,
    max_batch_size: int = 1_048_576,
) -> AIOKafkaProducer:
    """An idempotent producer with ``acks=all``: a retried send is never duplicated or reordered
    inside a partition by the broker. ``transactional_id`` additionally fences zombie producers
    that share it (a new instance's ``start()`` bumps the epoch, the old one's sends fail).
    """
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        linger_ms=linger_ms,
        max_batch_size=max_batch_size,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )


def make_consumer(
    bootstrap_servers: str, group_id: str, *topics: str, max_poll_records: int = 500
) -> AIOKafkaConsumer:
    """A consumer that never commits on its own: offsets are committed after the work is done."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=max_poll_records,
        request_timeout_ms=REQUEST_TIMEOUT_MS + 30_000,
    )


async def ensure_topics(
    bootstrap_servers: str, topics: Sequence[str] = ALL_TOPICS, partitions: int = TOPIC_PARTITIONS
) -> None:
    """Create ``topics`` if they do not exist; existing ones are left as they are (idempotent).

    Automatic topic creation is off on our brokers, so a mistyped topic name is an error.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=REQUEST_TIMEOUT_MS
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if missing:
            # Another process may create one between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


def encode_headers(headers: Mapping[str, str]) -> Headers:
    return [(name, value.encode()) for name, value in headers.items()]


def decode_headers(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    """Kafka headers as a ``str -> str`` dict; undecodable bytes are kept with replacement chars."""
    return {name: value.decode("utf-8", "replace") for name, value in (headers or ())}
