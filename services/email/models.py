"""The order-confirmation message: built from the event alone, so every redelivery builds the
same message, with the same ``Message-ID``."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from shared.events import OrderCreated

# Message-IDs are `<{event id}.order-created@outbox.local>`: stable across redeliveries, so a
# duplicate send (the one window SMTP leaves open) is recognisable and can be collapsed by the
# receiving side.
MESSAGE_ID_DOMAIN: Final = "outbox.local"


def message_id_for(event_id: str) -> str:
    return f"<{event_id}.order-created@{MESSAGE_ID_DOMAIN}>"


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
