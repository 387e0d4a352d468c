"""Classify failures once: the message's own fault, an infrastructure fault, or unknown.

* ``PERMANENT``: the message can never be processed (bad JSON, schema violation). Retrying is
  pointless; it goes straight to the DLQ.
* ``TRANSIENT``: something the message does not control is down or slow (Kafka, Redis, MongoDB,
  SMTP unreachable, timeouts, "not primary", any SMTP 4xx reply, including a refused RCPT).
  A MongoDB deadline is one too, whoever enforced it: the server (``ExecutionTimeout``, code 50
  MaxTimeMSExpired, a write concern timeout) or the client (``timeoutMS``). Back off and retry
  without limit; never the DLQ.
* ``UNKNOWN``: any other exception (a bug, an unexpected reply, an SMTP 5xx). Retried a bounded
  number of times, then the DLQ, so one bad message cannot stall its partition forever.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

import redis.exceptions as redis_errors
from aiokafka import errors as kafka_errors
from pymongo import errors as mongo_errors


class FaultKind(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    UNKNOWN = "unknown"


class PoisonMessage(Exception):
    """A message that can never be processed as it is: its own fault, not the system's."""


class TransientFault(Exception):
    """Raised by our own code for an infrastructure condition worth retrying."""


_TRANSIENT_MONGO_LABELS = (
    "TransientTransactionError",
    "RetryableWriteError",
    "ResumableChangeStreamError",
)
# SMTP replies 4xx are "try again later" by definition (RFC 5321 §4.2.1).
_SMTP_TRANSIENT_CODES = range(400, 500)


def classify(exc: BaseException) -> FaultKind:
    """Decide whether ``exc`` is the message's fault, the infrastructure's, or unknown."""
    if isinstance(exc, PoisonMessage):
        return FaultKind.PERMANENT
    if isinstance(exc, TransientFault | TimeoutError | asyncio.TimeoutError | ConnectionError):
        return FaultKind.TRANSIENT
    if isinstance(exc, mongo_errors.PyMongoError):
        if isinstance(exc, mongo_errors.ConnectionFailure | mongo_errors.NotPrimaryError):
            return FaultKind.TRANSIENT
        # PyMongo's own verdict on every deadline it knows (server-side maxTimeMS, wtimeout,
        # client-side timeoutMS, bulk writes with such an error): a slow database, not a bad
        # message, so the consumer must not spend a record's attempts and then dead-letter it.
        if exc.timeout:
            return FaultKind.TRANSIENT
        if any(exc.has_error_label(label) for label in _TRANSIENT_MONGO_LABELS):
            return FaultKind.TRANSIENT
        return FaultKind.UNKNOWN
    if isinstance(
        exc,
        redis_errors.ConnectionError | redis_errors.TimeoutError | redis_errors.BusyLoadingError,
    ):
        return FaultKind.TRANSIENT
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(
        ("LOADING", "MISCONF", "READONLY")
    ):
        return FaultKind.TRANSIENT
    if isinstance(exc, kafka_errors.KafkaError):
        if isinstance(exc, kafka_errors.KafkaConnectionError | kafka_errors.KafkaTimeoutError):
            return FaultKind.TRANSIENT
        return FaultKind.TRANSIENT if getattr(exc, "retriable", False) else FaultKind.UNKNOWN
    smtp_kind = _classify_smtp(exc)
    if smtp_kind is not None:
        return smtp_kind
    if isinstance(exc, OSError):
        # Connection refused/reset, host unreachable, broken pipe: all infrastructure.
        return FaultKind.TRANSIENT
    return FaultKind.UNKNOWN


def _classify_smtp(exc: BaseException) -> FaultKind | None:
    try:
        import aiosmtplib
    except ImportError:  # pragma: no cover - aiosmtplib is a runtime dependency
        return None
    if isinstance(
        exc,
        aiosmtplib.SMTPConnectError
        | aiosmtplib.SMTPServerDisconnected
        | aiosmtplib.SMTPTimeoutError
        | aiosmtplib.SMTPConnectTimeoutError,
    ):
        return FaultKind.TRANSIENT
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return FaultKind.TRANSIENT if exc.code in _SMTP_TRANSIENT_CODES else FaultKind.UNKNOWN
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        # Raised when every RCPT was refused (nothing was sent); it is not an
        # SMTPResponseException, so its codes are those of the refusals it carries. One 4xx
        # (a greylisting 450) means a later attempt can succeed: retry, never the DLQ.
        codes = [refusal.code for refusal in exc.recipients]
        if any(code in _SMTP_TRANSIENT_CODES for code in codes):
            return FaultKind.TRANSIENT
        return FaultKind.UNKNOWN
    return None
