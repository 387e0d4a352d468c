"""The Published mark records where Kafka put the event (topic, partition, offset), so an
operator can go from an order to its record; the integration test checks it against Kafka."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka.structs import RecordMetadata, TopicPartition

from services.relay.settle import published_fields
from shared.contracts import OutboxStatus
from shared.outbox import OutboxField

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_the_published_mark_records_the_topic_partition_and_offset_kafka_acknowledged() -> None:
    where = RecordMetadata(
        topic="order.created",
        partition=4,
        topic_partition=TopicPartition("order.created", 4),
        offset=2**40,  # an offset past 32 bits stays exact (stored as a BSON int64)
        timestamp=0,
        timestamp_type=0,
        log_start_offset=0,
    )
    f = OutboxField
    assert published_fields(where, 7, NOW) == {
        f.STATUS: OutboxStatus.PUBLISHED.value,
        f.PUBLISHED_AT: NOW,
        f.RELAY_EPOCH: 7,
        f.KAFKA_TOPIC: "order.created",
        f.KAFKA_PARTITION: 4,
        f.KAFKA_OFFSET: 2**40,
    }


def test_a_mark_without_metadata_writes_no_position_rather_than_a_wrong_one() -> None:
    fields = published_fields(None, 7, NOW)
    assert fields[OutboxField.STATUS] == OutboxStatus.PUBLISHED.value
    assert not {OutboxField.KAFKA_TOPIC, OutboxField.KAFKA_PARTITION, OutboxField.KAFKA_OFFSET} & (
        fields.keys()
    )
