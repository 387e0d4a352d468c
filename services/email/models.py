"""The customer's mails: the confirmation (``StockReserved``), the rejection notice
(``StockRejected``) and the cancellation notice (``OrderCancelled``). Each is built from its
event alone, so every redelivery builds the same message, with the same ``Message-ID``."""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from shared.events import EventItem, OrderCancelled, StockRejected, StockReserved

# Message-IDs are `<{event id}.{kind}@outbox.local>`, the event being the one the mail answers:
# stable across redeliveries, so a duplicate send (the one window SMTP leaves open) is
# recognisable and can be collapsed by the receiving side.
MESSAGE_ID_DOMAIN: Final = "outbox.local"
CONFIRMATION_KIND: Final = "order-confirmed"
REJECTION_KIND: Final = "order-rejected"
CANCELLATION_KIND: Final = "order-cancelled"
# Before inventory announced its verdict (issue 22) the confirmation answered ``OrderCreated``
# under this kind; older orders' mailboxes still hold such mails.
LEGACY_CONFIRMATION_KIND: Final = "order-created"


def message_id_for(event_id: str, kind: str = CONFIRMATION_KIND) -> str:
    return f"<{event_id}.{kind}@{MESSAGE_ID_DOMAIN}>"


def _addressed(
    sender: str, recipient: str, subject: str, message_id: str, at: datetime
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message["Date"] = format_datetime(at)
    return message


def _item_lines(items: list[EventItem]) -> list[str]:
    lines = []
    for item in items:
        line_total = item.unit_price * item.quantity
        lines.append(f"  {item.quantity} x {item.sku} @ {item.unit_price:.2f} = {line_total:.2f}")
    return lines


def confirmation_email(event: StockReserved, event_id: str, sender: str) -> EmailMessage:
    """The confirmation: recipient, subject, a line per item, the total."""
    message = _addressed(
        sender,
        event.customer_email,
        f"Order {event.order_id} confirmed",
        message_id_for(event_id),
        event.reserved_at,
    )
    lines = [f"Thank you for your order {event.order_id}.", "", "Items:"]
    lines += _item_lines(event.items)
    lines += ["", f"Total: {event.total:.2f}", ""]
    message.set_content("\n".join(lines))
    return message


def rejection_email(event: StockRejected, event_id: str, sender: str) -> EmailMessage:
    """The rejection notice: what was short (the SKUs and inventory's reason), the items asked
    for, and that nothing is charged."""
    message = _addressed(
        sender,
        event.customer_email,
        f"Order {event.order_id} could not be fulfilled",
        message_id_for(event_id, REJECTION_KIND),
        event.rejected_at,
    )
    lines = [
        f"We are sorry: we could not fulfil your order {event.order_id}.",
        "",
        f"Not available: {', '.join(event.short_skus)}",
        f"({event.reason})",
        "",
        "You asked for:",
        *_item_lines(event.items),
        "",
        f"Total not charged: {event.total:.2f}",
        "",
    ]
    message.set_content("\n".join(lines))
    return message


def cancellation_email(event: OrderCancelled, event_id: str, sender: str) -> EmailMessage:
    """The cancellation notice: recipient, subject, the order total."""
    message = _addressed(
        sender,
        event.customer_email,
        f"Order {event.order_id} cancelled",
        message_id_for(event_id, CANCELLATION_KIND),
        event.cancelled_at,
    )
    message.set_content(
        f"Your order {event.order_id} has been cancelled.\n\nTotal not charged: {event.total:.2f}\n"
    )
    return message
