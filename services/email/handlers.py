"""What happens to one ``OrderCreated`` event: one confirmation email over SMTP.

Exactly-once is impossible across SMTP: between the server's ``250 OK`` and our ``done`` marker
in Redis a crash leaves no record that the mail left, and the redelivery sends it again. The
consumer loop writes ``done`` immediately after this handler returns (nothing else in between),
which keeps that window to one Redis round trip; the stable ``Message-ID`` makes a copy
recognisable.
"""

from __future__ import annotations

import logging

import aiosmtplib

from services.email.models import confirmation_email
from services.email.settings import EmailSettings
from shared.consumer import Delivery
from shared.events import OrderCreated

log = logging.getLogger(__name__)

OUTCOME_SENT = "sent"


class ConfirmationSender:
    def __init__(self, settings: EmailSettings) -> None:
        self._settings = settings

    async def handle(self, event: OrderCreated, delivery: Delivery) -> str:
        """Send the confirmation; SMTP errors propagate for the loop to classify (connection
        refused, timeouts and 4xx are transient; a 5xx is retried 3 times, then the DLQ)."""
        message = confirmation_email(event, delivery.event_id, self._settings.sender)
        await aiosmtplib.send(
            message,
            hostname=self._settings.smtp_host,
            port=self._settings.smtp_port,
            timeout=self._settings.smtp_timeout_seconds,
            start_tls=False,
            use_tls=False,
        )
        log.info(
            "confirmation sent", extra={"order_id": event.order_id, "event_id": delivery.event_id}
        )
        return OUTCOME_SENT
