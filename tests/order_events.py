"""Order events as the order API writes them, for tests that feed consumers directly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from shared.events import EventItem, OrderCancelled, OrderCreated, StockRejected, StockReserved


def order_event(
    order_id: str | None = None,
    *,
    sku: str = "SKU-1",
    quantity: int = 2,
    email: str = "buyer@example.com",
) -> OrderCreated:
    order_id = order_id or f"ord-{uuid.uuid4().hex[:12]}"
    price = Decimal("12.50")
    return OrderCreated.model_validate(
        {
            "orderId": order_id,
            "userId": "user-1",
            "customerEmail": email,
            "total": str(price * quantity),
            "items": [
                EventItem.model_validate(
                    {"sku": sku, "quantity": quantity, "unitPrice": str(price)}
                ).model_dump(by_alias=True)
            ],
            "createdAt": datetime.now(UTC),
        }
    )


def cancel_event(created: OrderCreated) -> OrderCancelled:
    """The cancellation of ``created`` (what POST /orders/{id}/cancel writes)."""
    return OrderCancelled(
        order_id=created.order_id,
        user_id=created.user_id,
        customer_email=created.customer_email,
        total=created.total,
        cancelled_at=datetime.now(UTC),
    )


def reserved_event(created: OrderCreated) -> StockReserved:
    """Inventory's ``StockReserved`` answering ``created`` (what its outbox carries)."""
    return StockReserved.answering(created, reserved_at=datetime.now(UTC))


def rejected_event(created: OrderCreated, *, short_skus: list[str] | None = None) -> StockRejected:
    """Inventory's ``StockRejected`` answering ``created``: its first SKU short by default."""
    short = short_skus or [created.items[0].sku]
    reason = "insufficient stock: " + ", ".join(
        f"{sku} (wanted {created.items[0].quantity}, available 0)" for sku in short
    )
    return StockRejected.answering(
        created, reason=reason, short_skus=short, rejected_at=datetime.now(UTC)
    )
