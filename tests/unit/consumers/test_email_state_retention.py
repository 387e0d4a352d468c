"""Email's per-order state must outlive every replay that can reach it: the dead-letter topics
are created with a retention, and the state is kept for that long plus the redelivery window."""

from __future__ import annotations

from shared.contracts import (
    ALL_TOPICS,
    DLQ_SUFFIX,
    EVENT_TOPICS,
    IDEMPOTENCY_TTL_SECONDS,
    ORDER_STATE_TTL_SECONDS,
)
from shared.kafka import SINGLE_BROKER, TopicReplication, topic_config


def test_every_dead_letter_topic_keeps_records_no_longer_than_the_email_state_lives() -> None:
    dlq_topics = [t for t in ALL_TOPICS if t.endswith(DLQ_SUFFIX)]
    assert len(dlq_topics) == len(EVENT_TOPICS)
    for replication in (SINGLE_BROKER, TopicReplication.for_brokers(3)):
        for topic in dlq_topics:
            retention_seconds = int(topic_config(topic, replication)["retention.ms"]) // 1000
            assert retention_seconds > 0, topic
            # A replay can come as late as the retention, and wait in its source topic as long
            # as any redelivery: the state must still be there.
            assert retention_seconds + IDEMPOTENCY_TTL_SECONDS <= ORDER_STATE_TTL_SECONDS
        assert topic_config(dlq_topics[0], replication)["min.insync.replicas"] == str(
            replication.min_insync
        )


def test_source_topics_keep_the_brokers_retention() -> None:
    for topic in EVENT_TOPICS:
        assert "retention.ms" not in topic_config(topic, SINGLE_BROKER)
