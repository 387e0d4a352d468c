"""The order timeline is history: each step once, at the time the service that took it recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.console.views import Mail, Step, order_steps
from services.email.models import (
    CANCELLATION_KIND,
    LEGACY_CONFIRMATION_KIND,
    REJECTION_KIND,
    message_id_for,
)
from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
    OutboxStatus,
)

ORDER = "6b13e455aa0b2c3d4e5f6a7b"
CREATED_EVENT = "6b13e455aa0b2c3d4e5f6a7c"
CANCEL_EVENT = "6b13e455aa0b2c3d4e5f6a7d"
# Inventory's outbox: the verdict (version 1) and the release (version 2) of the reservation.
VERDICT_EVENT = "6b13e455aa0b2c3d4e5f6a7e"
RELEASE_EVENT = "6b13e455aa0b2c3d4e5f6a7f"
T0 = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(event_id: str, kind: str, written: float, published: float) -> dict[str, Any]:
    return {
        "id": event_id,
        "eventType": kind,
        "status": OutboxStatus.PUBLISHED.value,
        "attempts": 1,
        "createdAt": at(written),
        "publishedAt": at(published),
        "lastError": None,
        "traceparent": None,
        "kafka": {"topic": "order.x", "partition": 1, "offset": 7},
    }


def cancelled_order_world() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    order = {"createdAt": at(0), "cancelledAt": at(10), "status": "cancelled", "total": "9.00"}
    events = [
        event(CREATED_EVENT, EVENT_ORDER_CREATED, 0, 0.1),
        event(CANCEL_EVENT, EVENT_ORDER_CANCELLED, 10, 10.1),
    ]
    # What inventory's reservation of a reserved-then-cancelled order holds
    # (services/inventory/models.py, services/inventory/cancellation.py).
    reservation = {
        "orderId": ORDER,
        "eventId": CREATED_EVENT,
        "items": [{"sku": "SKU-1", "quantity": 2, "unitPrice": Decimal("4.50")}],
        "status": "cancelled",
        "reason": None,
        "version": 2,
        "createdAt": at(0.2),
        "cancelEventId": CANCEL_EVENT,
        "cancelledAt": at(10.2),
    }
    return order, events, reservation


def inventory_events() -> list[dict[str, Any]]:
    return [
        event(VERDICT_EVENT, EVENT_STOCK_RESERVED, 0.2, 0.25),
        event(RELEASE_EVENT, EVENT_STOCK_RELEASED, 10.2, 10.25),
    ]


def mails() -> list[Mail]:
    return [
        Mail(message_id_for(VERDICT_EVENT), at(0.3), "a@example.com"),
        Mail(message_id_for(CANCEL_EVENT, CANCELLATION_KIND), at(10.3), "a@example.com"),
        Mail("<somebody-else@outbox.local>", at(5), "b@example.com"),
    ]


def by_name(steps: list[Step]) -> dict[str, list[Step]]:
    named: dict[str, list[Step]] = {}
    for step in steps:
        named.setdefault(step.what, []).append(step)
    return named


def test_a_cancelled_order_shows_the_reservation_and_the_release_each_at_its_own_time() -> None:
    order, events, reservation = cancelled_order_world()
    steps = by_name(order_steps(ORDER, order, events, reservation, mails()))
    assert [s.at for s in steps["stock reserved"]] == [at(0.2)]
    assert [s.at for s in steps["stock released"]] == [at(10.2)]
    assert "2 x SKU-1" in steps["stock released"][0].detail
    assert CANCEL_EVENT in steps["stock released"][0].detail
    assert [s.at for s in steps["order cancelled"]] == [at(10)]
    assert "stock cancelled" not in steps
    assert "status cancelled" not in steps["order created"][0].detail  # not today's status


def test_the_confirmation_and_the_cancellation_notice_are_two_steps() -> None:
    order, events, reservation = cancelled_order_world()
    steps = by_name(
        order_steps(ORDER, order, events, reservation, mails(), inventory_events=inventory_events())
    )
    [confirmation] = steps["confirmation sent"]
    [notice] = steps["cancellation notice sent"]
    assert (confirmation.at, notice.at) == (at(0.3), at(10.3))
    assert message_id_for(CANCEL_EVENT, CANCELLATION_KIND) in notice.detail
    assert "email sent" not in steps
    assert not any(
        "somebody-else" in s.detail for s in order_steps(ORDER, order, events, reservation, mails())
    )


def test_a_second_copy_of_an_email_is_the_same_step() -> None:
    order, events, reservation = cancelled_order_world()
    twice = [*mails(), Mail(message_id_for(VERDICT_EVENT), at(0.9), "a@example.com")]
    steps = order_steps(
        ORDER, order, events, reservation, twice, inventory_events=inventory_events()
    )
    [confirmation] = by_name(steps)["confirmation sent"]
    assert confirmation.at == at(0.3)
    assert "received 2 times" in confirmation.detail


def test_steps_are_in_time_order() -> None:
    order, events, reservation = cancelled_order_world()
    steps = order_steps(ORDER, order, events, reservation, mails())
    times = [s.at for s in steps]
    assert None not in times
    assert times == sorted(t for t in times if t is not None)


def test_a_rejected_then_cancelled_order_released_nothing() -> None:
    order, events, reservation = cancelled_order_world()
    reservation["reason"] = "insufficient stock: SKU-1 (wanted 2, available 0)"
    steps = by_name(order_steps(ORDER, order, events, reservation, []))
    assert [s.at for s in steps["stock rejected"]] == [at(0.2)]
    assert "insufficient stock" in steps["stock rejected"][0].detail
    assert [s.at for s in steps["cancel recorded"]] == [at(10.2)]
    assert "stock released" not in steps
    assert "stock reserved" not in steps


def test_a_cancel_seen_before_the_creation_reserved_nothing() -> None:
    order, events, _ = cancelled_order_world()
    early: dict[str, Any] = {
        "orderId": ORDER,
        "eventId": None,
        "items": [],
        "status": "cancelled",
        "reason": "cancelled before its creation was seen",
        "version": 2,
        "createdAt": at(10.2),
        "cancelEventId": CANCEL_EVENT,
        "cancelledAt": at(10.2),
    }
    steps = by_name(order_steps(ORDER, order, events, early, []))
    assert [s.at for s in steps["cancel recorded before the order"]] == [at(10.2)]
    assert not {"stock reserved", "stock rejected", "stock released"} & set(steps)


def test_an_order_still_reserved_has_no_release() -> None:
    order, events, reservation = cancelled_order_world()
    del order["cancelledAt"]
    for field in ("cancelEventId", "cancelledAt"):
        del reservation[field]
    reservation["status"] = "reserved"
    steps = by_name(order_steps(ORDER, order, events[:1], reservation, mails()[:1]))
    assert [s.at for s in steps["stock reserved"]] == [at(0.2)]
    assert {"stock released", "order cancelled", "cancellation notice sent"}.isdisjoint(steps)


def test_a_send_the_email_service_recorded_but_the_mailbox_lacks_is_a_step_without_time() -> None:
    order, events, reservation = cancelled_order_world()
    # No mailbox configured: the email service's state says the notice left (the state keeps
    # the last send only, and no time).
    steps = by_name(order_steps(ORDER, order, events, reservation, [], "cancellation_sent"))
    [notice] = steps["cancellation notice sent"]
    assert notice.at is None
    assert "recorded by the email service" in notice.detail
    assert "confirmation sent" not in steps
    # With the mailbox showing it, the mailbox's step (with its time) is the only one.
    with_mail = by_name(
        order_steps(ORDER, order, events, reservation, mails(), "cancellation_sent")
    )
    assert [s.at for s in with_mail["cancellation notice sent"]] == [at(10.3)]


def history(*entries: tuple[str, float, str, str | None, str | None]) -> list[dict[str, Any]]:
    """The order's ``history`` as the order service stores it (services/order/models.py)."""
    stored = []
    for status, seconds, cause, event_id, note in entries:
        entry: dict[str, Any] = {"status": status, "at": at(seconds), "cause": cause}
        if event_id is not None:
            entry["eventId"] = event_id
        if note is not None:
            entry["note"] = note
        stored.append(entry)
    return stored


def test_the_orders_history_shows_each_transition_once_and_a_late_verdict_as_no_change() -> None:
    order, events, reservation = cancelled_order_world()
    order["history"] = history(
        ("confirmed", 0.4, EVENT_STOCK_RESERVED, VERDICT_EVENT, None),
        ("cancelled", 10, "POST /orders/{id}/cancel", None, None),
        ("cancelled", 12, EVENT_STOCK_RESERVED, VERDICT_EVENT, "verdict after cancel: reserved"),
    )
    steps = order_steps(
        ORDER, order, events, reservation, mails(), inventory_events=inventory_events()
    )
    named = by_name(steps)
    [confirmed] = named["order confirmed"]
    assert confirmed.at == at(0.4)
    assert EVENT_STOCK_RESERVED in confirmed.detail and VERDICT_EVENT in confirmed.detail
    # The cancel is in the history: cancelledAt does not add it a second time.
    assert [s.at for s in named["order cancelled"]] == [at(10)]
    [late] = named["order stays cancelled"]
    assert "verdict after cancel: reserved" in late.detail
    times = [s.at for s in steps]
    assert None not in times and times == sorted(t for t in times if t is not None)


def test_inventorys_outbox_events_show_where_they_were_published() -> None:
    order, events, reservation = cancelled_order_world()
    steps = by_name(
        order_steps(ORDER, order, events, reservation, mails(), inventory_events=inventory_events())
    )
    [written] = steps[f"inventory outbox {EVENT_STOCK_RESERVED} written"]
    assert (written.at, written.detail) == (at(0.2), f"event {VERDICT_EVENT}")
    [published] = steps[f"{EVENT_STOCK_RESERVED} published"]
    assert published.at == at(0.25)
    assert "partition 1, offset 7" in published.detail
    assert [s.at for s in steps[f"{EVENT_STOCK_RELEASED} published"]] == [at(10.25)]


def test_a_rejected_order_shows_the_verdict_and_the_rejection_notice() -> None:
    order, events, _ = cancelled_order_world()
    order = {**order, "status": "rejected", "cancelledAt": None}
    order["history"] = history(
        ("rejected", 0.4, EVENT_STOCK_REJECTED, VERDICT_EVENT, "insufficient stock: SKU-1")
    )
    rejected = [{**event(VERDICT_EVENT, EVENT_STOCK_REJECTED, 0.2, 0.25), "kafka": None}]
    notice = Mail(message_id_for(VERDICT_EVENT, REJECTION_KIND), at(0.5), "a@example.com")
    steps = by_name(
        order_steps(ORDER, order, events[:1], None, [notice], inventory_events=rejected)
    )
    assert "insufficient stock: SKU-1" in steps["order rejected"][0].detail
    assert [s.at for s in steps["rejection notice sent"]] == [at(0.5)]
    # Published before positions were recorded: the topic and partition the key implies.
    assert "topic inventory.rejected" in steps[f"{EVENT_STOCK_REJECTED} published"][0].detail
    assert {"confirmation sent", "order cancelled"}.isdisjoint(steps)
    # The email service's record alone (no mailbox): the notice is a step without a time.
    recorded = by_name(
        order_steps(ORDER, order, events[:1], None, [], "rejection_sent", inventory_events=rejected)
    )
    assert [s.at for s in recorded["rejection notice sent"]] == [None]


def test_an_order_from_before_the_loop_still_shows_its_confirmation() -> None:
    """No history, no inventory outbox, and a confirmation sent for the OrderCreated event under
    the old Message-ID kind: the timeline is what it was, without errors."""
    order, events, reservation = cancelled_order_world()
    legacy = [
        Mail(message_id_for(CREATED_EVENT, LEGACY_CONFIRMATION_KIND), at(0.3), "a@example.com"),
        Mail(message_id_for(CANCEL_EVENT, CANCELLATION_KIND), at(10.3), "a@example.com"),
    ]
    steps = by_name(order_steps(ORDER, order, events, reservation, legacy))
    assert [s.at for s in steps["confirmation sent"]] == [at(0.3)]
    assert [s.at for s in steps["order cancelled"]] == [at(10)]
    assert not any(name.startswith("inventory outbox") for name in steps)
    recorded = by_name(order_steps(ORDER, order, events, reservation, [], "confirmed"))
    assert [s.at for s in recorded["confirmation sent"]] == [None]


def test_a_malformed_history_gives_no_steps_and_no_error() -> None:
    order, events, reservation = cancelled_order_world()
    for bad in (None, "confirmed", [None, {"at": at(1)}, {"status": 3}]):
        order["history"] = bad
        steps = by_name(order_steps(ORDER, order, events, reservation, mails()))
        assert [s.at for s in steps["order cancelled"]] == [at(10)]
        assert not any(name.startswith("order stays") for name in steps)
