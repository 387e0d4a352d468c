"""The order's state machine as pure decisions (services.order.lifecycle)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from bson import ObjectId

from services.order.lifecycle import (
    CAUSE_CANCEL,
    CAUSE_PLACE,
    CancelDecision,
    Step,
    Verdict,
    decide_cancel,
    decide_verdict,
    history_entry,
    history_of,
    status_of,
)
from services.order.models import HistoryEntry, Order, OrderLine
from services.order.schemas import OrderStatus

PLACED, CONFIRMED, REJECTED, CANCELLED = (
    OrderStatus.PLACED,
    OrderStatus.CONFIRMED,
    OrderStatus.REJECTED,
    OrderStatus.CANCELLED,
)
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def test_an_order_stored_as_created_reads_as_placed() -> None:
    assert status_of("created") is PLACED
    assert [status_of(s.value) for s in OrderStatus] == list(OrderStatus)
    with pytest.raises(ValueError):
        status_of("shipped")


@pytest.mark.parametrize(
    ("status", "decision"),
    [
        (PLACED, CancelDecision.CANCEL),
        (CONFIRMED, CancelDecision.CANCEL),
        (CANCELLED, CancelDecision.ALREADY_CANCELLED),
        (REJECTED, CancelDecision.REFUSED),
    ],
)
def test_a_placed_or_confirmed_order_can_be_cancelled_a_rejected_one_cannot(
    status: OrderStatus, decision: CancelDecision
) -> None:
    assert decide_cancel(status) is decision


def test_only_a_placed_order_follows_the_verdict() -> None:
    assert decide_verdict(PLACED, Verdict.RESERVED) == Step(CONFIRMED, changed=True)
    assert decide_verdict(PLACED, Verdict.REJECTED, "short: SKU-A") == Step(
        REJECTED, changed=True, note="short: SKU-A"
    )


@pytest.mark.parametrize("status", [CONFIRMED, REJECTED, CANCELLED])
@pytest.mark.parametrize("verdict", [Verdict.RESERVED, Verdict.REJECTED])
def test_a_verdict_after_the_order_moved_on_is_recorded_and_changes_nothing(
    status: OrderStatus, verdict: Verdict
) -> None:
    step = decide_verdict(status, verdict, "reason")
    assert (step.status, step.changed) == (status, False)
    assert step.note is not None and step.note.endswith(f": {verdict.value}")


def test_a_verdict_after_a_cancel_says_so() -> None:
    assert decide_verdict(CANCELLED, Verdict.RESERVED).note == "verdict after cancel: reserved"


@pytest.mark.parametrize("status", list(OrderStatus))
def test_a_release_changes_no_status(status: OrderStatus) -> None:
    assert decide_verdict(status, Verdict.RELEASED) == Step(
        status, changed=False, note="stock released"
    )


def test_a_history_entry_leaves_out_what_it_does_not_know() -> None:
    assert history_entry(CANCELLED, T0, CAUSE_CANCEL) == {
        "status": "cancelled",
        "at": T0,
        "cause": CAUSE_CANCEL,
    }
    assert history_entry(CONFIRMED, T0, "StockReserved", event_id="e1", note="n") == {
        "status": "confirmed",
        "at": T0,
        "cause": "StockReserved",
        "eventId": "e1",
        "note": "n",
    }


def _order(
    status: str, *, cancelled: bool = False, history: list[HistoryEntry] | None = None
) -> Order:
    order: Order = Order.model_construct(
        id=ObjectId(),
        user_id="u",
        customer_email="a@example.com",
        items=[OrderLine(sku="S", quantity=1, unit_price=Decimal("1.00"))],
        total=Decimal("1.00"),
        status=status,
        created_at=T0,
        version=2 if cancelled else 1,
        cancelled_at=T0 + timedelta(seconds=5) if cancelled else None,
        history=history or [],
    )
    return order


def test_the_history_starts_with_the_placement_and_follows_the_stored_steps() -> None:
    steps = [
        HistoryEntry(
            status="confirmed", at=T0 + timedelta(seconds=1), cause="StockReserved", event_id="e1"
        ),
        HistoryEntry(status="cancelled", at=T0 + timedelta(seconds=5), cause=CAUSE_CANCEL),
    ]
    history = history_of(_order("cancelled", cancelled=True, history=steps))
    assert [(h.status, h.cause, h.event_id) for h in history] == [
        (PLACED, CAUSE_PLACE, None),
        (CONFIRMED, "StockReserved", "e1"),
        (CANCELLED, CAUSE_CANCEL, None),
    ]
    assert history[0].at == T0


def test_an_order_cancelled_before_histories_were_kept_still_shows_its_cancel() -> None:
    history = history_of(_order("cancelled", cancelled=True))
    assert [(h.status, h.cause) for h in history] == [
        (PLACED, CAUSE_PLACE),
        (CANCELLED, CAUSE_CANCEL),
    ]
    assert history[1].at == T0 + timedelta(seconds=5)
