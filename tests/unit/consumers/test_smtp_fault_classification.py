"""SMTP replies through the one classifier (:func:`shared.errors.classify`): a 4xx anywhere in the
dialogue (greeting, MAIL FROM, RCPT TO, DATA) is "try again later" (RFC 5321 §4.2.1), so it is
retried like any outage and never dead-lettered; a 5xx is never treated as transient."""

from __future__ import annotations

import aiosmtplib
import pytest

from shared.errors import FaultKind, classify


def _rcpt(code: int) -> aiosmtplib.SMTPRecipientRefused:
    return aiosmtplib.SMTPRecipientRefused(code, "try later", "buyer@example.com")


@pytest.mark.parametrize(
    "exc",
    [
        # Greylisting answers RCPT with 450; aiosmtplib reports "every recipient refused" with
        # an exception that is not an SMTPResponseException and carries no code of its own.
        aiosmtplib.SMTPRecipientsRefused([_rcpt(450)]),
        aiosmtplib.SMTPRecipientsRefused([_rcpt(451), _rcpt(550)]),
        aiosmtplib.SMTPRecipientRefused(452, "mailbox full, try later", "buyer@example.com"),
        aiosmtplib.SMTPSenderRefused(451, "local error", "orders@outbox.local"),
        aiosmtplib.SMTPDataError(452, "insufficient storage"),
        aiosmtplib.SMTPHeloError(421, "closing"),
        aiosmtplib.SMTPConnectResponseError(421, "too busy"),
        aiosmtplib.SMTPResponseException(454, "TLS not available"),
    ],
    ids=lambda exc: f"{type(exc).__name__}",
)
def test_a_temporary_smtp_refusal_anywhere_in_the_dialogue_is_transient(
    exc: BaseException,
) -> None:
    assert classify(exc) is FaultKind.TRANSIENT


@pytest.mark.parametrize(
    "exc",
    [
        aiosmtplib.SMTPRecipientsRefused([_rcpt(550)]),
        aiosmtplib.SMTPRecipientsRefused([_rcpt(550), _rcpt(553)]),
        aiosmtplib.SMTPRecipientsRefused([]),
        aiosmtplib.SMTPSenderRefused(553, "sender rejected", "orders@outbox.local"),
        aiosmtplib.SMTPDataError(554, "rejected as spam"),
    ],
    ids=lambda exc: f"{type(exc).__name__}",
)
def test_a_definitive_smtp_refusal_is_never_transient(exc: BaseException) -> None:
    # Not transient: bounded attempts, then the DLQ with the server's reply as the reason.
    assert classify(exc) is not FaultKind.TRANSIENT
