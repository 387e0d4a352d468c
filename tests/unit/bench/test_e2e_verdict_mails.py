"""The end-to-end bench follows the verdict loop: an order's email is the mail its verdict got
(the confirmation or the rejection notice, as the email service builds them), a cancellation
notice is told apart, and the bench's own shortcuts write what the services write."""

from __future__ import annotations

import time
from email.message import EmailMessage
from pathlib import Path

from bench.article_consumer import confirmation_of
from bench.e2e_latency import EmailScanner
from bench.order_api import _raw_documents
from services.email.models import cancellation_email, confirmation_email, rejection_email
from services.order.schemas import OrderStatus
from tests.order_events import cancel_event, order_event, rejected_event, reserved_event

SENDER = "Outbox Shop <orders@outbox.local>"


def _reserved(order_id: str) -> EmailMessage:
    return confirmation_email(reserved_event(order_event(order_id)), f"evt-{order_id}", SENDER)


def _rejected(order_id: str) -> EmailMessage:
    return rejection_email(rejected_event(order_event(order_id)), f"evt-{order_id}", SENDER)


def _cancelled(order_id: str) -> EmailMessage:
    return cancellation_email(cancel_event(order_event(order_id)), f"evt-{order_id}-c", SENDER)


def _deliver(inbox: Path, message: EmailMessage, received_ns: int) -> None:
    # As the SMTP sink names its files: `<ns timestamp>-<uuid>.eml`.
    (inbox / f"{received_ns}-{received_ns % 997}.eml").write_bytes(message.as_bytes())


def test_an_orders_email_is_its_confirmation_or_its_rejection_notice(tmp_path: Path) -> None:
    confirmed, rejected, cancelled = "a" * 24, "b" * 24, "c" * 24
    scanner = EmailScanner(tmp_path)
    now = time.time_ns()
    _deliver(tmp_path, _reserved(confirmed), now)
    _deliver(tmp_path, _rejected(rejected), now + 1_000_000)
    _deliver(tmp_path, _cancelled(cancelled), now + 2_000_000)
    # A second copy (SMTP's one duplicate window): the first receipt stays the order's.
    _deliver(tmp_path, _reserved(confirmed), now + 3_000_000)

    scanner.scan()

    assert scanner.received == {confirmed: now / 1e9, rejected: (now + 1_000_000) / 1e9}
    assert scanner.rejected == {rejected}
    assert scanner.cancellations == {cancelled}


def test_the_article_consumer_confirms_what_inventorys_verdict_would_carry() -> None:
    order = order_event("d" * 24)
    verdict = confirmation_of(order)
    assert (verdict.order_id, verdict.customer_email, verdict.total, verdict.items) == (
        order.order_id,
        order.customer_email,
        order.total,
        order.items,
    )
    assert confirmation_email(verdict, "evt", SENDER)["Subject"] == f"Order {'d' * 24} confirmed"


def test_the_raw_transaction_writes_a_new_order_as_the_api_places_it() -> None:
    order, event = _raw_documents(0)
    # What a new order reads as in the API's terms today (not the legacy `created`).
    assert order["status"] == OrderStatus.PLACED.value
    assert event["aggregateVersion"] == 1
