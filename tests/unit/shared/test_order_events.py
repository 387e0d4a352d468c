"""The order events' contract: topics by the naming rule, the OrderCancelled schema, the
aggregateVersion header consumers order by, and the cancellation email built from the event."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.email.models import cancellation_email, confirmation_email
from shared.contracts import (
    ALL_TOPICS,
    EVENT_ORDER_CANCELLED,
    EVENT_TOPICS,
    ORDER_CANCELLED_DLQ_TOPIC,
    ORDER_CANCELLED_TOPIC,
    ORDER_TOPICS,
    Header,
    dlq_topic_for,
    order_state_key,
    topic_for_event_type,
)
from shared.errors import PoisonMessage
from shared.events import (
    EventItem,
    OrderCancelled,
    StockReserved,
    aggregate_version_of,
    parse_order_cancelled,
)

EVENT_ID = "6b09d3f9da9393e11e35d14e"


def _cancelled() -> OrderCancelled:
    return OrderCancelled(
        order_id="o-1",
        user_id="u-1",
        customer_email="buyer@example.com",
        total=Decimal("25.00"),
        cancelled_at=datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
    )


def test_the_cancel_topic_follows_the_naming_rule_and_has_its_own_dlq() -> None:
    assert topic_for_event_type(EVENT_ORDER_CANCELLED) == ORDER_CANCELLED_TOPIC
    assert ORDER_CANCELLED_TOPIC == "order.cancelled"
    assert dlq_topic_for(ORDER_CANCELLED_TOPIC) == ORDER_CANCELLED_DLQ_TOPIC
    assert set(ALL_TOPICS) == {
        *EVENT_TOPICS,
        *(dlq_topic_for(t) for t in EVENT_TOPICS),
    }
    assert set(EVENT_TOPICS) >= set(ORDER_TOPICS)


def test_an_order_cancelled_event_round_trips_through_its_json() -> None:
    event = _cancelled()
    parsed = parse_order_cancelled(event.to_json().encode())
    assert parsed == event
    assert json.loads(event.to_json())["total"] == "25.00"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "tombstone"),
        (b"{not json", "not JSON"),
        (json.dumps({"schemaVersion": 1, "orderId": "o-1"}).encode(), "customerEmail"),
        (json.dumps({"schemaVersion": 2}).encode(), "unknown schemaVersion"),
    ],
)
def test_a_bad_cancel_is_poison_naming_the_problem(value: bytes | None, reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        parse_order_cancelled(value)


@pytest.mark.parametrize("text", ["", "0", "-1", "two", "1.5"])
def test_a_missing_or_bad_aggregate_version_header_is_poison(text: str) -> None:
    with pytest.raises(PoisonMessage, match=Header.AGGREGATE_VERSION):
        aggregate_version_of({Header.AGGREGATE_VERSION: text} if text else {})


def test_the_aggregate_version_header_is_read_as_an_integer() -> None:
    assert aggregate_version_of({Header.AGGREGATE_VERSION: "2"}) == 2


def test_the_cancellation_email_has_its_own_message_id_from_the_event_id() -> None:
    message = cancellation_email(_cancelled(), EVENT_ID, "shop@example.com")
    assert message["Message-ID"] == f"<{EVENT_ID}.order-cancelled@outbox.local>"
    assert message["Subject"] == "Order o-1 cancelled"
    assert message["To"] == "buyer@example.com"
    reserved = StockReserved(
        order_id="o-1",
        customer_email="buyer@example.com",
        total=Decimal("25.00"),
        items=[EventItem(sku="A", quantity=2, unit_price=Decimal("12.50"))],
        reserved_at=datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
    )
    # The same event id under another kind: a confirmation never collides with a cancellation.
    confirmation = confirmation_email(reserved, EVENT_ID, "shop@example.com")
    assert confirmation["Message-ID"] != message["Message-ID"]


def test_order_state_keys_are_per_service() -> None:
    assert order_state_key("email", "o-1") == "order:email:o-1"
    with pytest.raises(ValueError, match="service name"):
        order_state_key("a:b", "o-1")
