"""What happens to one order event: one confirmation (``OrderCreated``) or one cancellation
notice (``OrderCancelled``) over SMTP.

Exactly-once is impossible across SMTP: between the server's ``250 OK`` and our ``done`` marker
in Redis a crash leaves no record that the mail left, and the redelivery sends it again. The
consumer loop writes ``done`` immediately after this handler returns (nothing else in between),
which keeps that window to one Redis round trip; the stable ``Message-ID`` makes a copy
recognisable.

The two events travel on two topics, so their order is not Kafka's to keep: the per-order state
of :mod:`services.email.order_state` makes sure no confirmation leaves for an order this service
already knows as cancelled, whichever event comes first and however often either is replayed.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import Final

import aiosmtplib
from redis.asyncio import Redis

from services.email.models import cancellation_email, confirmation_email
from services.email.order_state import OrderState, OrderStates
from services.email.settings import EmailSettings
from shared.consumer import Delivery
from shared.errors import TransientFault
from shared.events import OrderCancelled, OrderEvent
from shared.tracing import step_span

log = logging.getLogger(__name__)

SERVICE: Final = "email"
OUTCOME_SENT = "sent"
OUTCOME_CANCELLATION_SENT = "cancellation_sent"
OUTCOME_SKIPPED_CANCELLED = "skipped_cancelled"


class ConfirmationSender:
    def __init__(self, settings: EmailSettings, states: OrderStates) -> None:
        self._settings = settings
        self._states = states

    async def handle(self, event: OrderEvent, delivery: Delivery) -> str:
        """Send the event's email; SMTP errors propagate for the loop to classify (connection
        refused, timeouts and 4xx are transient; a 5xx is retried 3 times, then the DLQ)."""
        extra = {"order_id": event.order_id, "event_id": delivery.event_id}
        if isinstance(event, OrderCancelled):
            if await self._states.begin_cancellation(event.order_id) is OrderState.CONFIRMING:
                # Retried with backoff; the confirmation ends within one lease at most.
                raise TransientFault(f"confirmation of order {event.order_id} is being sent")
            await self._send(cancellation_email(event, delivery.event_id, self._settings.sender))
            log.info("cancellation sent", extra=extra)
            return OUTCOME_CANCELLATION_SENT
        # The engine claimed this event before calling us: while that claim is live (renewed
        # during a slow send, gone soon after a crash) the confirmation counts as in flight.
        started = await self._states.begin_confirmation(event.order_id, delivery.claim_key)
        if started is OrderState.CANCELLED:
            log.info("confirmation skipped: order already cancelled", extra=extra)
            return OUTCOME_SKIPPED_CANCELLED
        await self._send(confirmation_email(event, delivery.event_id, self._settings.sender))
        await self._states.end_confirmation(event.order_id)
        log.info("confirmation sent", extra=extra)
        return OUTCOME_SENT

    async def _send(self, message: EmailMessage) -> None:
        with step_span("smtp send", **{"messaging.message.id": str(message["Message-ID"])}):
            await aiosmtplib.send(
                message,
                hostname=self._settings.smtp_host,
                port=self._settings.smtp_port,
                timeout=self._settings.smtp_timeout_seconds,
                start_tls=False,
                use_tls=False,
            )


def make_sender(settings: EmailSettings, redis: Redis) -> ConfirmationSender:
    """The email handler with its per-order state in ``redis`` (the caller closes it)."""
    states = OrderStates(redis, SERVICE)
    return ConfirmationSender(settings, states)
