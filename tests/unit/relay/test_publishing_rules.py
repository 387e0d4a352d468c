"""The relay's pure rules: topic names, record shape, send plan, what may be marked, errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka import errors as kafka_errors
from bson import ObjectId
from pydantic import ValidationError

from services.relay.publisher import (
    OutboxEvent,
    PoisonEvent,
    acknowledged,
    classify_publish_error,
    plan_batch,
)
from services.relay.settings import RelaySettings
from shared.contracts import Header, topic_for_event_type
from shared.errors import FaultKind
from shared.kafka import decode_headers


def event(aggregate: str, version: int, **overrides: object) -> OutboxEvent:
    fields: dict[str, object] = {
        "id": ObjectId(),
        "aggregate_type": "Order",
        "aggregate_id": aggregate,
        "aggregate_version": version,
        "event_type": "OrderCreated",
        "payload": '{"orderId": "x"}',
        "attempts": 0,
        "created_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "traceparent": None,
    }
    fields.update(overrides)
    return OutboxEvent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event_type", "topic"),
    [
        ("OrderCreated", "order.created"),
        ("InventoryReserved", "inventory.reserved"),
        ("PaymentRefundIssued", "payment.refund.issued"),
        ("Order", "order"),
    ],
)
def test_topic_is_the_event_type_split_on_words_and_dotted(event_type: str, topic: str) -> None:
    assert topic_for_event_type(event_type) == topic


def test_record_carries_key_value_and_every_contract_header() -> None:
    e = event("order-1", 3, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    topic, key, value, headers = e.to_record()
    assert (topic, key, value) == ("order.created", b"order-1", b'{"orderId": "x"}')
    assert decode_headers(headers) == {
        Header.IDEMPOTENCY_KEY: str(e.id),
        Header.EVENT_TYPE: "OrderCreated",
        Header.AGGREGATE_TYPE: "Order",
        Header.AGGREGATE_ID: "order-1",
        Header.AGGREGATE_VERSION: "3",
        Header.OCCURRED_AT: "2025-01-02T03:04:05+00:00",
        Header.TRACEPARENT: "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    }


def test_record_has_no_traceparent_header_when_the_event_has_none() -> None:
    *_, headers = event("order-1", 1).to_record()
    assert Header.TRACEPARENT not in decode_headers(headers)


@pytest.mark.parametrize(
    "overrides",
    [
        {"event_type": "order created"},
        {"payload": None},
        {"payload": {"a": 1}},
        {"payload": "\ud800"},
        {"aggregate_id": ""},
    ],
)
def test_an_event_that_cannot_become_a_record_is_poison(overrides: dict[str, object]) -> None:
    with pytest.raises(PoisonEvent):
        event("order-1", 1, **overrides).to_record()


def test_plan_sends_each_aggregate_in_version_order() -> None:
    a3, a1, b1, a2 = event("a", 3), event("a", 1), event("b", 1), event("a", 2)
    assert plan_batch([a3, a1, b1, a2], {}) == [a1, a2, a3, b1]


def test_plan_holds_back_versions_at_or_after_a_failed_one_of_the_same_aggregate_only() -> None:
    a3, a4, b2 = event("a", 3), event("a", 4), event("b", 2)
    assert plan_batch([a3, a4, b2], {"a": 3}) == [b2]
    assert plan_batch([a3, a4, b2], {"a": 4}) == [a3, b2]


def test_only_the_acknowledged_prefix_is_marked() -> None:
    boom = kafka_errors.KafkaTimeoutError()
    assert acknowledged([None, None, boom, None], [True] * 4) == [0, 1]
    assert acknowledged([boom, None], [True, True]) == []
    assert acknowledged([None, None], [True, True]) == [0, 1]


def test_events_refused_before_sending_do_not_cut_the_prefix() -> None:
    too_large = kafka_errors.MessageSizeTooLargeError()
    assert acknowledged([None, too_large, None], [True, False, True]) == [0, 2]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (kafka_errors.MessageSizeTooLargeError(), FaultKind.PERMANENT),
        (kafka_errors.RecordTooLargeError(), FaultKind.PERMANENT),
        (kafka_errors.InvalidTopicError(), FaultKind.PERMANENT),
        (PoisonEvent("bad payload"), FaultKind.PERMANENT),
        (kafka_errors.KafkaConnectionError(), FaultKind.TRANSIENT),
        (kafka_errors.KafkaTimeoutError(), FaultKind.TRANSIENT),
        (kafka_errors.NotLeaderForPartitionError(), FaultKind.TRANSIENT),
        (RuntimeError("bug"), FaultKind.UNKNOWN),
    ],
)
def test_publish_errors_are_classified(error: BaseException, kind: FaultKind) -> None:
    assert classify_publish_error(error) is kind


def test_settings_refuse_a_renewal_interval_too_close_to_the_lease_ttl() -> None:
    with pytest.raises(ValidationError):
        RelaySettings(lease_ttl_seconds=4, lease_renew_seconds=3)


def test_settings_refuse_unknown_failpoints_and_any_failpoint_in_production() -> None:
    with pytest.raises(ValidationError, match="unknown failpoint"):
        RelaySettings(failpoint="before_everything", enable_failpoints=True)
    with pytest.raises(ValidationError):
        RelaySettings(
            failpoint="after_kafka_ack",
            environment="production",
            mongo_uri="mongodb://db:27017/?replicaSet=rs0",
        )


def test_settings_defaults_match_the_documented_ones() -> None:
    s = RelaySettings()
    assert (s.port, s.batch_size, s.sweep_interval_seconds, s.backoff_max_seconds) == (
        8001,
        500,
        1.0,
        5.0,
    )
    assert s.transactional and s.failpoint is None
