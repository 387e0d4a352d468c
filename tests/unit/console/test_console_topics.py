"""The console covers every event topic of shared/contracts.py, each one's dead letters, and each
consumer group on the topics it reads."""

from __future__ import annotations

from services.console.settings import MIN_TOKEN_CHARS, ConsoleSettings
from services.console.views import dlq_counts, group_dead_letters, read_topics_only
from shared.contracts import (
    ALL_TOPICS,
    EMAIL_GROUP,
    EVENT_TOPICS,
    INVENTORY_GROUP,
    INVENTORY_REJECTED_TOPIC,
    INVENTORY_RESERVED_TOPIC,
    INVENTORY_TOPICS,
    ORDER_CANCELLED_DLQ_TOPIC,
    ORDER_CANCELLED_TOPIC,
    ORDER_CREATED_DLQ_TOPIC,
    ORDER_CREATED_TOPIC,
    ORDER_GROUP,
    Header,
)
from shared.dlq import StoredDlqRecord
from shared.lag import GroupLag


def dead_letter(topic: str, offset: int, group: str = "inventory-service") -> StoredDlqRecord:
    headers = {Header.CONSUMER_GROUP: group, Header.FAILURE_REASON: "PoisonMessage: bad JSON"}
    return StoredDlqRecord(
        topic, 0, offset, b"k", b"v", [(n, v.encode()) for n, v in headers.items()]
    )


def test_by_default_the_console_reads_every_topic_of_the_contracts_and_its_dlq() -> None:
    settings = ConsoleSettings(token="t" * MIN_TOKEN_CHARS)
    assert set(settings.topics) | set(settings.dlq_topics) == set(ALL_TOPICS)
    assert ORDER_CANCELLED_DLQ_TOPIC in settings.dlq_topics


def test_dead_letters_of_two_topics_are_two_groups_even_with_one_cause() -> None:
    records = [
        dead_letter(ORDER_CREATED_DLQ_TOPIC, 0),
        dead_letter(ORDER_CANCELLED_DLQ_TOPIC, 0),
        dead_letter(ORDER_CANCELLED_DLQ_TOPIC, 1),
    ]
    groups = group_dead_letters(records)
    assert [(g.topic, len(g.records)) for g in groups] == [
        (ORDER_CANCELLED_DLQ_TOPIC, 2),
        (ORDER_CREATED_DLQ_TOPIC, 1),
    ]
    assert dlq_counts(records) == {
        ORDER_CANCELLED_DLQ_TOPIC: {"inventory-service": 2},
        ORDER_CREATED_DLQ_TOPIC: {"inventory-service": 1},
    }


def test_the_lag_page_shows_each_group_on_the_topics_it_reads_the_order_service_included() -> None:
    settings = ConsoleSettings(token="t" * MIN_TOKEN_CHARS)
    assert ORDER_GROUP in settings.groups
    every = [
        GroupLag(g, t, {0: 5}) for g in (*settings.groups, "a-test-group") for t in EVENT_TOPICS
    ]
    shown = {(lag.group, lag.topic) for lag in read_topics_only(every, settings)}
    assert shown == {
        (INVENTORY_GROUP, ORDER_CREATED_TOPIC),
        (INVENTORY_GROUP, ORDER_CANCELLED_TOPIC),
        (EMAIL_GROUP, INVENTORY_RESERVED_TOPIC),
        (EMAIL_GROUP, INVENTORY_REJECTED_TOPIC),
        (EMAIL_GROUP, ORDER_CANCELLED_TOPIC),
        *((ORDER_GROUP, topic) for topic in INVENTORY_TOPICS),
        # A group the console does not know (a test's own) is taken to read every topic.
        *(("a-test-group", topic) for topic in EVENT_TOPICS),
    }
    assert set(settings.dlq_topics) >= {f"{topic}.dlq" for topic in INVENTORY_TOPICS}
