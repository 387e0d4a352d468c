"""The console covers every order topic of shared/contracts.py and each one's dead letters."""

from __future__ import annotations

from services.console.settings import MIN_TOKEN_CHARS, ConsoleSettings
from services.console.views import dlq_counts, group_dead_letters
from shared.contracts import ALL_TOPICS, ORDER_CANCELLED_DLQ_TOPIC, ORDER_CREATED_DLQ_TOPIC, Header
from shared.dlq import StoredDlqRecord


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
