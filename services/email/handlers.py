"""What happens to one event the email service hears: the confirmation (``StockReserved``), the
rejection notice (``StockRejected``) or the cancellation notice (``OrderCancelled``), over SMTP,
each at most once per order.

Exactly-once is impossible across SMTP: between the server's ``250 OK`` and the one Redis write
that records the send, a crash leaves no record that the mail left, and the redelivery sends it
again; the stable ``Message-ID`` makes that copy recognisable. That is the only window:

* each send is recorded in the order's state (``confirmed``, ``rejection_sent``,
  ``cancellation_sent``) right after the 250; every later delivery of the event (a retry, a
  redelivery after a crash before the engine's ``done``, a late replay) finds the record and
  sends nothing;
* if that write fails (Redis away), the mail is remembered in this process as sent and the
  engine's retry of the attempt writes the record, never the mail again.

The events travel on three topics, so their order is not Kafka's to keep: the per-order state
of :mod:`services.email.order_state` makes sure no verdict mail leaves for an order this service
already knows as cancelled, and at most one verdict mail leaves per order, whichever event comes
first and however often any is replayed.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import Final, TypeAlias

import aiosmtplib
from redis.asyncio import Redis

from services.email.models import cancellation_email, confirmation_email, rejection_email
from services.email.order_state import CONFIRMATION, REJECTION, OrderState, OrderStates, Verdict
from services.email.settings import EmailSettings
from shared.consumer import Delivery
from shared.errors import TransientFault
from shared.events import OrderCancelled, StockRejected, StockReserved
from shared.lifecycle import exit_at_failpoint
from shared.tracing import step_span

log = logging.getLogger(__name__)

# What the email service consumes: the verdicts and the cancellation (not ``OrderCreated``: one
# mail per outcome, see the README).
EmailEvent: TypeAlias = StockReserved | StockRejected | OrderCancelled

SERVICE: Final = "email"
OUTCOME_SENT = "sent"
OUTCOME_REJECTION_SENT = "rejection_sent"
OUTCOME_CANCELLATION_SENT = "cancellation_sent"
OUTCOME_SKIPPED_CANCELLED = "skipped_cancelled"
OUTCOME_SKIPPED_ALREADY_SENT = "skipped_already_sent"
OUTCOME_SKIPPED_OTHER_VERDICT = "skipped_other_verdict"

# Failpoint (test-only): exit right after SMTP's 250, before the send is recorded: the one
# window in which an email can be sent twice.
FAILPOINT_AFTER_SMTP_OK = "after_smtp_ok"


class ConfirmationSender:
    def __init__(self, settings: EmailSettings, states: OrderStates) -> None:
        self._settings = settings
        self._states = states
        # Dedup claim keys of emails that left (SMTP said 250) and are not recorded in Redis
        # yet: one per record in flight, dropped once its record is written.
        self._sent_unrecorded: set[str] = set()

    async def handle(self, event: EmailEvent, delivery: Delivery) -> str:
        """Send the event's email unless the order's state forbids it, then record the send.
        SMTP errors propagate for the loop to classify (connection refused, timeouts and 4xx
        are transient; a 5xx is retried 3 times, then the DLQ)."""
        extra = {"order_id": event.order_id, "event_id": delivery.event_id}
        claim = delivery.claim_key
        if claim not in self._sent_unrecorded:
            skipped = await self._begin(event, claim, extra)
            if skipped is not None:
                return skipped
            await self._send(self._message(event, delivery.event_id), claim)
        if isinstance(event, OrderCancelled):
            await self._states.end_cancellation(event.order_id)
            outcome, done = OUTCOME_CANCELLATION_SENT, "cancellation sent"
        elif isinstance(event, StockRejected):
            await self._states.end_verdict(REJECTION, event.order_id)
            outcome, done = OUTCOME_REJECTION_SENT, "rejection notice sent"
        else:
            await self._states.end_verdict(CONFIRMATION, event.order_id)
            outcome, done = OUTCOME_SENT, "confirmation sent"
        self._sent_unrecorded.discard(claim)
        log.info(done, extra=extra)
        return outcome

    async def _begin(self, event: EmailEvent, claim: str, extra: dict[str, str]) -> str | None:
        """Mark the email in flight in the order's state; the outcome to stop with when it must
        not be sent, ``None`` to send it."""
        if isinstance(event, OrderCancelled):
            before = await self._states.begin_cancellation(event.order_id)
            if before.is_in_flight:
                # Retried with backoff; the verdict's mail ends within one lease at most.
                raise TransientFault(f"{before.value} mail of order {event.order_id} in flight")
            if before is OrderState.CANCELLATION_SENT:
                log.info("cancellation skipped: already sent", extra=extra)
                return OUTCOME_SKIPPED_ALREADY_SENT
            return None
        verdict = REJECTION if isinstance(event, StockRejected) else CONFIRMATION
        # The engine claimed this event before calling us: while that claim is live (renewed
        # during a slow send, gone soon after a crash) the mail counts as in flight.
        before = await self._states.begin_verdict(verdict, event.order_id, claim)
        return _skipped(verdict, before, extra)

    def _message(self, event: EmailEvent, event_id: str) -> EmailMessage:
        if isinstance(event, OrderCancelled):
            return cancellation_email(event, event_id, self._settings.sender)
        if isinstance(event, StockRejected):
            return rejection_email(event, event_id, self._settings.sender)
        return confirmation_email(event, event_id, self._settings.sender)

    async def _send(self, message: EmailMessage, claim: str) -> None:
        with step_span("smtp send", **{"messaging.message.id": str(message["Message-ID"])}):
            async with self._smtp() as client:
                await client.send_message(message)
                # DATA's 250: the mail left. Until the record is written, only this process
                # knows it: if the write (or the polite QUIT) fails or is cut, the engine's
                # retry of the attempt (same claim) comes back to write the record, not to send.
                self._sent_unrecorded.add(claim)
                exit_at_failpoint(self._settings.failpoint, FAILPOINT_AFTER_SMTP_OK)

    def _smtp(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self._settings.smtp_host,
            port=self._settings.smtp_port,
            timeout=self._settings.smtp_timeout_seconds,
            start_tls=False,
            use_tls=False,
        )


def _skipped(verdict: Verdict, before: OrderState, extra: dict[str, str]) -> str | None:
    """Why a verdict's mail must not be sent given the order's state before, or ``None``."""
    what = "confirmation" if verdict is CONFIRMATION else "rejection notice"
    if before.is_cancelled:
        log.info(f"{what} skipped: order already cancelled", extra=extra)
        return OUTCOME_SKIPPED_CANCELLED
    if before is verdict.sent:
        log.info(f"{what} skipped: already sent", extra=extra)
        return OUTCOME_SKIPPED_ALREADY_SENT
    if before in (verdict.other_sending, verdict.other_sent):
        # Inventory gives one verdict per order; a second one is a bug upstream, and the
        # customer keeps hearing the first.
        log.warning(f"{what} skipped: the other verdict's mail is {before.value}", extra=extra)
        return OUTCOME_SKIPPED_OTHER_VERDICT
    return None


def make_sender(settings: EmailSettings, redis: Redis) -> ConfirmationSender:
    """The email handler with its per-order state in ``redis`` (the caller closes it)."""
    states = OrderStates(redis, SERVICE)
    return ConfirmationSender(settings, states)
