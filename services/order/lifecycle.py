"""The order's state machine: which cause moves an order from which status to which, and the
history entry each step leaves.

    placed --StockReserved--> confirmed
    placed --StockRejected--> rejected                             (final)
    placed | confirmed --POST /orders/{id}/cancel--> cancelled     (final; 409 from rejected)

The decisions here are pure (status in, step out). Their writers (:mod:`services.order.cancel`
for the API, :mod:`services.order.verdicts` for inventory's events) apply a step in one write
conditional on the status they read, so a cancel racing a verdict cannot both win: the loser
re-reads and decides again. A verdict that reaches an order which has moved on changes nothing
but is recorded, so the history tells the whole story whatever the arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Final

from services.order.models import Order
from services.order.schemas import HistoryEntryOut, OrderStatus
from shared.contracts import EVENT_STOCK_REJECTED, EVENT_STOCK_RELEASED, EVENT_STOCK_RESERVED

# What orders were stored with before the state machine: the same state as `placed`.
LEGACY_STATUS_PLACED: Final = "created"

CAUSE_PLACE: Final = "POST /orders"
CAUSE_CANCEL: Final = "POST /orders/{id}/cancel"

CANCELLABLE: Final = frozenset({OrderStatus.PLACED, OrderStatus.CONFIRMED})


def status_of(stored: str) -> OrderStatus:
    """The status an order document stores, read in today's terms (``created`` is ``placed``).

    Raises ``ValueError`` for a value no version of the API wrote."""
    if stored == LEGACY_STATUS_PLACED:
        return OrderStatus.PLACED
    return OrderStatus(stored)


class CancelDecision(Enum):
    CANCEL = "cancel"  # placed or confirmed: cancel it now (and announce it)
    ALREADY_CANCELLED = "already_cancelled"  # the 200 replay: nothing written
    REFUSED = "refused"  # rejected: 409 naming the state, nothing written


def decide_cancel(status: OrderStatus) -> CancelDecision:
    if status is OrderStatus.CANCELLED:
        return CancelDecision.ALREADY_CANCELLED
    if status in CANCELLABLE:
        return CancelDecision.CANCEL
    return CancelDecision.REFUSED


class Verdict(StrEnum):
    """What inventory said about an order's stock."""

    RESERVED = "reserved"
    REJECTED = "rejected"
    RELEASED = "released"


VERDICT_OF_EVENT_TYPE: Final = {
    EVENT_STOCK_RESERVED: Verdict.RESERVED,
    EVENT_STOCK_REJECTED: Verdict.REJECTED,
    EVENT_STOCK_RELEASED: Verdict.RELEASED,
}

# How a note names the status a late verdict found: "verdict after cancel: reserved".
_MOVED_ON: Final = {
    OrderStatus.CONFIRMED: "confirmation",
    OrderStatus.REJECTED: "rejection",
    OrderStatus.CANCELLED: "cancel",
}


@dataclass(frozen=True)
class Step:
    """What one verdict does to an order: its status after, whether that is a change, and the
    note its history entry carries."""

    status: OrderStatus
    changed: bool
    note: str | None = None


def decide_verdict(status: OrderStatus, verdict: Verdict, reason: str | None = None) -> Step:
    """The step a verdict makes from ``status``. Only a ``placed`` order moves; a release, or a
    verdict reaching an order that moved on (cancelled first, or a second verdict), is recorded
    with the status unchanged: the verdict is a fact about the stock, the order's fate is not
    reopened by it."""
    if verdict is Verdict.RELEASED:
        return Step(status, changed=False, note="stock released")
    if status is OrderStatus.PLACED:
        if verdict is Verdict.RESERVED:
            return Step(OrderStatus.CONFIRMED, changed=True)
        return Step(OrderStatus.REJECTED, changed=True, note=reason)
    return Step(status, changed=False, note=f"verdict after {_MOVED_ON[status]}: {verdict}")


def history_entry(
    status: OrderStatus,
    at: datetime,
    cause: str,
    *,
    event_id: str | None = None,
    note: str | None = None,
) -> dict[str, object]:
    """A history entry as stored (camelCase, absent rather than null), for a ``$push``."""
    entry: dict[str, object] = {"status": status.value, "at": at, "cause": cause}
    if event_id is not None:
        entry["eventId"] = event_id
    if note is not None:
        entry["note"] = note
    return entry


def history_of(order: Order) -> list[HistoryEntryOut]:
    """The order's history for the read model: its placement (read from ``createdAt``), then
    each stored step. An order cancelled before histories were kept gets its cancel from
    ``cancelledAt``, so every order's history ends in its current status."""
    steps = [
        HistoryEntryOut(
            status=OrderStatus.PLACED, at=order.created_at.astimezone(UTC), cause=CAUSE_PLACE
        )
    ]
    for entry in order.history:
        steps.append(
            HistoryEntryOut(
                status=status_of(entry.status),
                at=entry.at.astimezone(UTC),
                cause=entry.cause,
                event_id=entry.event_id,
                note=entry.note,
            )
        )
    cancelled_unrecorded = all(step.cause != CAUSE_CANCEL for step in steps)
    if order.cancelled_at is not None and cancelled_unrecorded:
        steps.append(
            HistoryEntryOut(
                status=OrderStatus.CANCELLED,
                at=order.cancelled_at.astimezone(UTC),
                cause=CAUSE_CANCEL,
            )
        )
    return steps
