"""MongoDB deadlines through the one classifier (:func:`shared.errors.classify`): a server that ran
out of time (``ExecutionTimeout``, code 50 MaxTimeMSExpired), a write concern that timed out, or
a client-side deadline (``timeoutMS`` / ``pymongo.timeout``) is a slow database, not the
message's fault: retried without limit, never dead-lettered. The order API answers 503 for the
same rule (``services/order/errors.py`` asks ``classify``)."""

from __future__ import annotations

import pytest
from pymongo import errors as mongo_errors

from shared.errors import FaultKind, classify

_MAX_TIME = {"ok": 0, "errmsg": "operation exceeded time limit", "code": 50}


@pytest.mark.parametrize(
    "exc",
    [
        # What PyMongo raises when the server stops an operation at its maxTimeMS.
        mongo_errors.ExecutionTimeout("operation exceeded time limit", 50, _MAX_TIME),
        # The same reply surfaced as a plain OperationFailure (inside a transaction, a command).
        mongo_errors.OperationFailure(
            "operation exceeded time limit", 50, {**_MAX_TIME, "codeName": "MaxTimeMSExpired"}
        ),
        # A write concern that was not satisfied in time (wtimeout, or the CSOT deadline).
        mongo_errors.WTimeoutError("waiting for replication timed out", 64, {"ok": 1}),
        # An insert_many / bulk_write whose write hit the deadline.
        mongo_errors.BulkWriteError(
            {"writeErrors": [{"index": 0, "code": 50, "errmsg": "exceeded time limit"}]}
        ),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_a_mongodb_deadline_is_transient(exc: mongo_errors.PyMongoError) -> None:
    assert exc.timeout  # the fact the rule reads, as PyMongo reports it
    assert classify(exc) is FaultKind.TRANSIENT


@pytest.mark.parametrize(
    "exc",
    [
        mongo_errors.OperationFailure("unknown operator: $foo", 2, {"ok": 0, "code": 2}),
        mongo_errors.BulkWriteError(
            {"writeErrors": [{"index": 0, "code": 121, "errmsg": "Document failed validation"}]}
        ),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_a_mongodb_refusal_without_a_timeout_is_not_transient(
    exc: mongo_errors.PyMongoError,
) -> None:
    # A refusal the same bytes will meet again: bounded retries, then the DLQ (never for ever).
    assert not exc.timeout
    assert classify(exc) is FaultKind.UNKNOWN
