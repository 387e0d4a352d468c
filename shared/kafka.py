"""Kafka plumbing: producer and consumer factories, topic bootstrap, header helpers."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from shared.contracts import ALL_TOPICS, DLQ_RETENTION_SECONDS, DLQ_SUFFIX, TOPIC_PARTITIONS

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# Every Kafka request must fail within this long when the broker is away.
REQUEST_TIMEOUT_MS = 10_000

# Three copies survive one broker lost and one more being restarted or paused; more copies on a
# bigger cluster only cost disk and replication traffic.
MAX_REPLICATION_FACTOR = 3


@dataclass(frozen=True)
class TopicReplication:
    """How many copies of every partition a cluster keeps, and how many must hold a write.

    One rule for the broker's defaults and internal topics (``__consumer_offsets``,
    ``__transaction_state``) and for the topics :func:`ensure_topics` creates, so the two never
    disagree.
    """

    factor: int
    min_insync: int

    @classmethod
    def for_brokers(cls, brokers: int) -> TopicReplication:
        """Replication factor ``min(brokers, 3)``; ``min.insync.replicas`` a majority of it.

        With ``acks=all`` a write is acknowledged only once a majority of the replicas hold it,
        so any majority that survives holds every acknowledged write, and with unclean leader
        election off only an in-sync replica can lead: one broker lost (RF 3, min ISR 2) loses
        nothing and stops nothing. Two brokers lost stop the writes rather than risk them
        (``NotEnoughReplicas``, retried by the producer). One broker: 1 and 1, nothing to
        replicate.
        """
        if brokers < 1:
            raise ValueError(f"a Kafka cluster has at least one broker, got {brokers}")
        factor = min(brokers, MAX_REPLICATION_FACTOR)
        return cls(factor=factor, min_insync=factor // 2 + 1)

    def topic_config(self) -> dict[str, str]:
        """Per-topic settings of a topic with this replication."""
        return {
            "min.insync.replicas": str(self.min_insync),
            # Never elect a replica that missed acknowledged writes (Kafka's default, stated).
            "unclean.leader.election.enable": "false",
        }


SINGLE_BROKER = TopicReplication.for_brokers(1)


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


def make_reader(bootstrap_servers: str) -> AIOKafkaConsumer:
    """A consumer outside any group, for reading partitions it is assigned by hand: it joins no
    group and commits nothing, so reading never changes what a group has left to read. Sees only
    committed transactional records, like the services' consumers.
    """
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=REQUEST_TIMEOUT_MS + 30_000,
    )


async def ensure_topics(
    bootstrap_servers: str,
    topics: Sequence[str] = ALL_TOPICS,
    partitions: int = TOPIC_PARTITIONS,
    replication: TopicReplication = SINGLE_BROKER,
) -> None:
    """Create ``topics`` if they do not exist; existing ones are left as they are (idempotent).

    Automatic topic creation is off on our brokers, so a mistyped topic name is an error. A
    ``replication`` the cluster cannot meet (fewer live brokers than its factor) is refused by
    the broker: the topic is not created with fewer copies.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=REQUEST_TIMEOUT_MS
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(t, partitions, replication.factor, topic_configs=topic_config(t, replication))
            for t in topics
            if t not in existing
        ]
        if missing:
            response = await admin.create_topics(missing)
            _raise_refusals(response.topic_errors)
    finally:
        await admin.close()


def topic_config(topic: str, replication: TopicReplication) -> dict[str, str]:
    """The settings :func:`ensure_topics` creates ``topic`` with: its replication's, and for a
    dead-letter topic the retention the per-order state is sized for
    (:data:`shared.contracts.ORDER_STATE_TTL_SECONDS`)."""
    config = replication.topic_config()
    if topic.endswith(DLQ_SUFFIX):
        config["retention.ms"] = str(DLQ_RETENTION_SECONDS * 1000)
    return config


def _raise_refusals(topic_errors: Iterable[tuple[Any, ...]]) -> None:
    """aiokafka returns the broker's per-topic answers instead of raising: a topic the broker
    refused (bad name, a replication factor above the live brokers) must not pass as created."""
    for topic, code, *message in topic_errors:
        error = for_code(code)
        # Another process may create one between our list and create: that is fine.
        if code == 0 or error is TopicAlreadyExistsError:
            continue
        detail = f": {message[0]}" if message and message[0] else ""
        raise error(f"topic {topic} not created ({error.__name__}{detail})")


def encode_headers(headers: Mapping[str, str]) -> Headers:
    return [(name, value.encode()) for name, value in headers.items()]


def decode_headers(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    """Kafka headers as a ``str -> str`` dict; undecodable bytes are kept with replacement chars."""
    return {name: value.decode("utf-8", "replace") for name, value in (headers or ())}
