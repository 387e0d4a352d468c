"""The confirmation and cancellation messages: built from the event alone, so every redelivery
builds the same message, with the same ``Message-ID``."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from shared.events import OrderCancelled, OrderCreated

# Message-IDs are `<{event id}.order-created@outbox.local>` (`.order-cancelled` for a
# cancellation): stable across redeliveries, so a duplicate send (the one window SMTP leaves
# open) is recognisable and can be collapsed by the receiving side.
MESSAGE_ID_DOMAIN: Final = "outbox.local"
CONFIRMATION_KIND: Final = "order-created"
CANCELLATION_KIND: Final = "order-cancelled"


def message_id_for(event_id: str, kind: str = CONFIRMATION_KIND) -> str:
    return f"<{event_id}.{kind}@{MESSAGE_ID_DOMAIN}>"


def confirmation_email(event: OrderCreated, event_id: str, sender: str) -> EmailMessage:
    """The confirmation: recipient, subject, a line per item, the total."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = event.customer_email
    message["Subject"] = f"Order {event.order_id} confirmed"
    message["Message-ID"] = message_id_for(event_id)
    message["Date"] = format_datetime(event.created_at)
    lines = [f"Thank you for your order {event.order_id}.", "", "Items:"]
    for item in event.items:
        line_total = item.unit_price * item.quantity
        lines.append(f"  {item.quantity} x {item.sku} @ {item.unit_price:.2f} = {line_total:.2f}")
    lines += ["", f"Total: {event.total:.2f}", ""]
    message.set_content("\n".join(lines))
    return message


def cancellation_email(event: OrderCancelled, event_id: str, sender: str) -> EmailMessage:
    """The cancellation notice: recipient, subject, the order total."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = event.customer_email
    message["Subject"] = f"Order {event.order_id} cancelled"
    message["Message-ID"] = message_id_for(event_id, CANCELLATION_KIND)
    message["Date"] = format_datetime(event.cancelled_at)
    message.set_content(
        f"Your order {event.order_id} has been cancelled.\n\nTotal not charged: {event.total:.2f}\n"
    )
    return message
