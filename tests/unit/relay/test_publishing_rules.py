"""The relay's pure rules: topic names, record shape, send plan, what may be marked, errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import errors as kafka_errors
from bson import Decimal128, ObjectId
from bson.int64 import Int64
from pydantic import ValidationError

from services.relay.lease import Fenced
from services.relay.outbox_event import MalformedEvent, OutboxEvent, PoisonEvent
from services.relay.rules import (
    BatchFault,
    Collateral,
    Verdict,
    acknowledged,
    classify_publish_error,
    is_fencing,
    judge_failures,
    plan_batch,
)
from services.relay.settings import FAILPOINT_AFTER_KAFKA_ACK, RelaySettings
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


def test_settings_refuse_unknown_failpoints() -> None:
    # Opted in, so only the name can be what is refused.
    with pytest.raises(ValidationError, match="unknown failpoint 'before_everything'"):
        RelaySettings(failpoint="before_everything", enable_failpoints=True)
    assert RelaySettings(failpoint=FAILPOINT_AFTER_KAFKA_ACK, enable_failpoints=True).failpoint


def test_settings_refuse_any_failpoint_in_production_even_opted_in() -> None:
    # Everything else is valid for production (a replica set, the opt-in given), so the
    # production rule alone refuses it; the same settings outside production are accepted.
    armed: dict[str, Any] = {
        "failpoint": FAILPOINT_AFTER_KAFKA_ACK,
        "enable_failpoints": True,
        "mongo_uri": "mongodb://db:27017/?replicaSet=rs0",
    }
    assert RelaySettings(**armed, environment="test").failpoint == FAILPOINT_AFTER_KAFKA_ACK
    with pytest.raises(ValidationError, match="ENABLE_FAILPOINTS must not be set"):
        RelaySettings(**armed, environment="production")


def test_settings_defaults_match_the_documented_ones() -> None:
    s = RelaySettings()
    assert (s.port, s.batch_size, s.sweep_interval_seconds, s.backoff_max_seconds) == (
        8001,
        500,
        5.0,
        5.0,
    )
    assert s.transactional and s.failpoint is None


def outbox_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "aggregateType": "Order",
        "aggregateId": "order-1",
        "aggregateVersion": 1,
        "eventType": "OrderCreated",
        "payload": "{}",
        "status": "Pending",
        "attempts": 0,
        "createdAt": datetime(2025, 1, 2, tzinfo=UTC),
        "publishedAt": None,
        "lastError": None,
        "traceparent": None,
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not _ABSENT}


_ABSENT = object()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"aggregateVersion": "v2"}, "aggregateVersion"),
        ({"aggregateVersion": Decimal128("2")}, "aggregateVersion"),
        ({"aggregateVersion": 2.0}, "aggregateVersion"),
        ({"aggregateVersion": True}, "aggregateVersion"),
        ({"aggregateVersion": 0}, "aggregateVersion"),
        ({"aggregateVersion": _ABSENT}, "aggregateVersion"),
        ({"aggregateId": _ABSENT}, "aggregateId"),
        ({"aggregateId": 42}, "aggregateId"),
        ({"eventType": None}, "eventType"),
        ({"aggregateType": ["Order"]}, "aggregateType"),
        ({"createdAt": "2025-01-02"}, "createdAt"),
        ({"attempts": "3"}, "attempts"),
        ({"traceparent": 7}, "traceparent"),
    ],
)
def test_a_malformed_outbox_document_is_refused_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(MalformedEvent, match=field):
        OutboxEvent.from_doc(outbox_doc(**overrides))


def test_a_well_formed_outbox_document_is_read_as_is() -> None:
    doc = outbox_doc(aggregateVersion=Int64(3), attempts=_ABSENT)
    read = OutboxEvent.from_doc(doc)
    assert (read.aggregate_version, read.attempts, read.aggregate_id) == (3, 0, "order-1")


MAX = 5


def test_a_transient_fault_never_spends_the_budget_even_on_the_last_attempt() -> None:
    away = kafka_errors.KafkaConnectionError()
    assert judge_failures([away, away], [True, True], MAX, [MAX - 1, 0]) == {
        0: Verdict.TRANSIENT,
        1: Verdict.TRANSIENT,
    }
    batch = BatchFault(RuntimeError("commit failed"))
    assert judge_failures([batch], [True], MAX, [MAX - 1]) == {0: Verdict.TRANSIENT}


def test_one_non_retriable_error_on_every_record_of_the_round_is_not_the_events_fault() -> None:
    # aiokafka fails every future of a partition's batch with one error object; when nothing of
    # the round got through, the error says nothing about any single event.
    shared = kafka_errors.UnknownError()
    too_large = kafka_errors.MessageSizeTooLargeError()
    verdicts = judge_failures(
        [shared, shared, too_large], [True, True, True], MAX, [MAX - 1, MAX - 1, 0]
    )
    assert set(verdicts.values()) == {Verdict.TRANSIENT}


def test_one_error_object_shared_by_several_records_is_the_batchs_fault() -> None:
    shared = kafka_errors.UnknownError()
    verdicts = judge_failures([None, shared, shared], [True, True, True], MAX, [0, MAX - 1, 0])
    assert verdicts == {1: Verdict.TRANSIENT, 2: Verdict.TRANSIENT}


def test_an_error_of_its_own_while_others_went_through_spends_the_events_budget() -> None:
    own = RuntimeError("broker refused this record")
    assert judge_failures([None, own], [True, True], MAX, [0, 0]) == {1: Verdict.RETRY}
    assert judge_failures([None, own], [True, True], MAX, [0, MAX - 1]) == {1: Verdict.FAIL}
    # Acknowledged inside an aborted transaction still shows Kafka works.
    assert judge_failures([Collateral(), own], [True, True], MAX, [0, 0]) == {1: Verdict.RETRY}


def test_a_record_refused_before_queueing_is_its_own_fault() -> None:
    too_large = kafka_errors.MessageSizeTooLargeError()
    assert judge_failures([too_large], [False], MAX, [0]) == {0: Verdict.FAIL}


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.ProducerFenced(),
        kafka_errors.InvalidProducerEpoch(),
        BatchFault(kafka_errors.ProducerFenced()),
        Fenced("lease lost"),
    ],
)
def test_fencing_is_recognised_wherever_it_comes_from(error: BaseException) -> None:
    assert is_fencing(error)


def test_a_fencing_error_wrapped_by_another_is_still_fencing() -> None:
    try:
        try:
            raise kafka_errors.ProducerFenced()
        except kafka_errors.ProducerFenced as exc:
            raise kafka_errors.KafkaError("Unexpected error during batch delivery") from exc
    except kafka_errors.KafkaError as wrapped:
        assert is_fencing(wrapped)
    assert not is_fencing(kafka_errors.KafkaConnectionError())


async def test_the_relays_producer_sends_a_round_at_once_instead_of_lingering() -> None:
    # The relay queues a whole round before it waits, so lingering batches nothing more and
    # only delays every small round (at light load, every event) by linger_ms.
    from typing import cast

    from services.relay.sender import KafkaSender

    settings = RelaySettings(port=0, transactional_id="")
    lease = cast(Any, type("Lease", (), {"slot": 0})())
    producer = KafkaSender(settings, lease).default_producer()
    try:
        assert producer._message_accumulator._linger_time == 0
    finally:
        await producer.stop()  # never started: only releases what the constructor opened
