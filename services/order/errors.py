"""The order API's error format and the exception handlers that produce it.

Every error is ``{"error": code, "message": text, "fields": [{"field", "message", "type"}]}``
(:class:`~services.order.schemas.ErrorOut`). The handlers map each failure to its status once:
validation 422, unknown route 404/405, idempotency conflict 409, MongoDB away 503 (with
``Retry-After``), any other database refusal 500, anything unexpected 500. Bearer-token
refusals (:mod:`shared.auth`) come out in the same format through :func:`auth_error_response`:
401/400 with ``WWW-Authenticate``, 503 when the identity provider's keys cannot be read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.order.cancel import OrderNotCancellable
from services.order.handlers import IdempotencyConflict
from services.order.schemas import ErrorOut, FieldError
from shared.errors import FaultKind, classify

log = logging.getLogger(__name__)


class ServiceUnavailable(Exception):
    """The request cannot be served now (MongoDB not bound yet); answered 503 + Retry-After."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def error_response(
    status: int,
    error: str,
    message: str,
    fields: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorOut(error=error, message=message, fields=fields or [])
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def unavailable(message: str) -> JSONResponse:
    # Retry-After: the client may try again soon; with an Idempotency-Key that is always safe.
    return error_response(503, "service_unavailable", message, headers={"Retry-After": "1"})


def auth_error_response(
    status: int, error: str, message: str, headers: Mapping[str, str]
) -> JSONResponse:
    """A refused bearer token, in the API's error format (``render`` of
    :func:`shared.auth.dependency.install_bearer_auth`).

    ``message`` is one of shared.auth's fixed descriptions, never the token or a claim, so it
    may be logged and answered as it is.
    """
    log.info(
        "request refused by the bearer-token check", extra={"status": status, "reason": message}
    )
    return error_response(status, error, message, headers=headers)


def user_not_token_subject() -> JSONResponse:
    """403: the body's ``userId`` names someone other than the token's subject."""
    return error_response(
        403,
        "user_mismatch",
        "userId must be the token's subject (sub); leave it out to order as the token's user",
        [FieldError(field="userId", message="not the token's subject", type="forbidden")],
    )


def order_not_found(order_id: str) -> JSONResponse:
    return error_response(
        404,
        "order_not_found",
        f"no order with id {order_id!r}",
        [FieldError(field="order_id", message="unknown order", type="not_found")],
    )


# OpenAPI descriptions of the errors several routes share. The limits themselves are settings:
# the API description (services.order.app) states this deployment's values.
TOO_LARGE: Final[dict[str, Any]] = {
    "model": ErrorOut,
    "description": "Body larger than `ORDER_MAX_BODY_BYTES` (see the API description); "
    "refused before it is read further.",
}
INVALID: Final[dict[str, Any]] = {
    "model": ErrorOut,
    "description": "Invalid body or header (including a body that is not UTF-8 JSON: "
    '`field: "body"`, `type: "json_invalid"`); `fields` names each one.',
}
UNAVAILABLE: Final[dict[str, Any]] = {
    "model": ErrorOut,
    "description": "MongoDB unreachable or slower than the request's database deadline (see "
    "the API description), or the identity provider's keys cannot be read for a token signed "
    "with a key not cached yet; nothing was written. Safe to retry with the same "
    "Idempotency-Key.",
}
_CHALLENGE: Final[dict[str, Any]] = {
    "WWW-Authenticate": {
        "description": 'RFC 6750 challenge: `Bearer` (no token sent) or `Bearer error="..."`.',
        "schema": {"type": "string"},
    }
}
UNAUTHORIZED: Final[dict[str, Any]] = {
    "model": ErrorOut,
    "description": "No bearer token, or one that is not valid (expired, not yet valid, another "
    "issuer or audience, a key the issuer does not publish, a bad signature, not an accepted "
    "asymmetric algorithm); nothing was written.",
    "headers": _CHALLENGE,
}
BAD_AUTHORIZATION: Final[dict[str, Any]] = {
    "model": ErrorOut,
    "description": "A malformed `Authorization` header (`invalid_request`: two of them, one "
    "too long, `Bearer` without exactly one token); nothing was written.",
    "headers": _CHALLENGE,
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    # ("body", "items", 0, "quantity") -> "items.0.quantity"; ("header", "Idempotency-Key") ->
    # "Idempotency-Key"; a body that is missing or not JSON at all -> "body".
    if loc and loc[0] in ("body", "header", "path", "query") and len(loc) > 1:
        loc = loc[1:]
    path = ".".join(str(part) for part in loc)
    return path or "body"


def _validation_fields(exc: RequestValidationError) -> list[FieldError]:
    fields = []
    for err in exc.errors():
        kind = str(err.get("type", "value_error"))
        loc = tuple(err.get("loc", ()))
        if kind == "json_invalid":
            fields.append(FieldError(field="body", message="body is not valid JSON", type=kind))
            continue
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        fields.append(FieldError(field=_field_path(loc), message=message, type=kind))
    return fields


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = _validation_fields(exc)
    names = ", ".join(sorted({f.field for f in fields}))
    return error_response(422, "validation_error", f"invalid request: {names}", fields)


async def _on_http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _on_conflict(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IdempotencyConflict)
    # No order id here: keys are per user, and the answer to a reused key must not point at
    # an order (GET /orders/{id} shows its e-mail address and items).
    return error_response(
        409,
        "idempotency_key_reused",
        f"{exc}; use a new key for a new order",
        [
            FieldError(
                field="Idempotency-Key", message="already used for another body", type="conflict"
            )
        ],
    )


async def _on_not_cancellable(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OrderNotCancellable)
    # The state is named in the message and as the field's message, for a client to act on.
    return error_response(
        409,
        "order_not_cancellable",
        str(exc),
        [FieldError(field="status", message=exc.status.value, type="conflict")],
    )


async def _on_unavailable(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceUnavailable)
    return unavailable(exc.message)


async def _on_mongo(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PyMongoError)
    if exc.has_error_label("UnknownTransactionCommitResult"):
        log.error("commit outcome unknown", extra={"reason": repr(exc)})
        return unavailable(
            "database did not confirm the commit in time; the order may "
            "exist: retry with the same Idempotency-Key"
        )
    if classify(exc) is FaultKind.TRANSIENT:  # a deadline (``.timeout``) included
        log.warning("database unavailable", extra={"reason": repr(exc)})
        return unavailable("database unavailable; nothing was written")
    log.error("database error", extra={"reason": repr(exc)})
    return error_response(
        500, "database_error", "the database refused the transaction; nothing was written"
    )


async def _on_bug(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "unexpected error; nothing was written")


def install_exception_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app`` (most specific first; ``Exception`` last)."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(IdempotencyConflict, _on_conflict)
    app.add_exception_handler(OrderNotCancellable, _on_not_cancellable)
    app.add_exception_handler(ServiceUnavailable, _on_unavailable)
    app.add_exception_handler(PyMongoError, _on_mongo)
    app.add_exception_handler(Exception, _on_bug)
