"""The order API's routes: ``orders`` (create, cancel, read), ``probes`` (health, ready, metrics).

Each route does HTTP only (headers, status, Location) and hands the work to
:mod:`services.order.handlers`; errors are raised and mapped by :mod:`services.order.errors`.

Every order route takes a :data:`~shared.auth.dependency.PrincipalDep`: no valid bearer token, no
answer (the probes and the OpenAPI document stay open). The order belongs to the token's
subject; another user's order is answered exactly like an unknown id (404), so the API tells no
one which ids exist. Only :data:`~shared.auth.SUPPORT_ROLE` reads every order.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Annotated

from fastapi import APIRouter, Header, Path, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.order.cancel import cancel_order
from services.order.errors import (
    BAD_AUTHORIZATION,
    INVALID,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    order_not_found,
    user_not_token_subject,
)
from services.order.handlers import create_order, get_order, traceparent_for
from services.order.json_body import JsonRoute
from services.order.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    CreateOrderRequest,
    ErrorOut,
    OrderOut,
    OrderWithEventsOut,
)
from services.order.state import ReadyStateDep, StateDep
from shared.auth import SUPPORT_ROLE, Principal
from shared.auth.dependency import PrincipalDep
from shared.health import readiness_body
from shared.identifiers import OBJECT_ID_PATTERN, parse_object_id

log = logging.getLogger(__name__)

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="1-255 printable ASCII characters, scoped to the token's user (sub). Same "
        "user, key and body: the original order (200, Idempotent-Replayed: true); same user and "
        "key, other body: 409. Another user's key never matches.",
    ),
]
# Served, not refused: ObjectId hex is case-insensitive, so "6B13..." names the order "6b13..." does
# and a client that upper-cased an id (a spreadsheet, a log viewer) still reaches it. The route
# turns the text into the ObjectId at once; only its stored spelling travels on (body, event,
# slot, Kafka key, logs). The pattern is published but not enforced: any other text is 404.
OrderIdPath = Annotated[
    str,
    Path(
        description="The order's id: 24 hexadecimal characters, in either case (an ObjectId's "
        "hex is case-insensitive, so both spellings name the same order). Whatever case is "
        "sent, the answer, the order's events and everything downstream carry the stored "
        "lower-case spelling. Any other text is an unknown order (404).",
        json_schema_extra={"pattern": OBJECT_ID_PATTERN},
        examples=["6b13e4556b13e4556b13e455"],
    ),
]
TraceparentHeader = Annotated[
    str | None,
    Header(
        description="W3C trace context. Stored with the outbox event (the relay puts it into "
        "the Kafka headers); a new trace is started when absent or invalid."
    ),
]

orders = APIRouter(route_class=JsonRoute)
probes = APIRouter()

# The refusals of the bearer-token check, on every order route.
_AUTH_RESPONSES: dict[int | str, dict[str, object]] = {400: BAD_AUTHORIZATION, 401: UNAUTHORIZED}


def reads_every_order(principal: Principal) -> bool:
    """Support staff read any order; they cancel only their own (a cancel is the customer's)."""
    return principal.has_scope_or_role(SUPPORT_ROLE)


@orders.post(
    "/orders",
    status_code=201,
    response_model=OrderOut,
    summary="Create an order (and its OrderCreated outbox event, atomically)",
    description="The order belongs to the bearer token's subject (`sub`): `userId` may be left "
    "out, and when sent must be that subject.",
    responses={
        **_AUTH_RESPONSES,
        200: {
            "model": OrderOut,
            "description": "Idempotent replay: the order this user first created with this "
            "Idempotency-Key and body; header Idempotent-Replayed: true.",
        },
        201: {"description": "Created; Location: /orders/{id}."},
        403: {
            "model": ErrorOut,
            "description": "`userId` is not the token's subject; nothing was written.",
        },
        409: {
            "model": ErrorOut,
            "description": "This user already used the Idempotency-Key with another body "
            "(the answer names no order).",
        },
        413: TOO_LARGE,
        422: INVALID,
        503: UNAVAILABLE,
    },
)
async def post_order(
    principal: PrincipalDep,
    body: CreateOrderRequest,
    response: Response,
    state: ReadyStateDep,
    idempotency_key: IdempotencyKeyHeader = None,
    traceparent: TraceparentHeader = None,
) -> OrderOut | JSONResponse:
    user_id = principal.subject
    # The body's userId was stored in NFC (shared.identifiers); compare the subject the same way.
    if body.user_id is not None and body.user_id != unicodedata.normalize("NFC", user_id):
        return user_not_token_subject()
    result = await create_order(
        state.client,
        body,
        user_id=user_id,
        idempotency_key=idempotency_key,
        traceparent=traceparent_for(traceparent),
        metrics=state.metrics,
        deadline_seconds=state.settings.request_deadline_seconds,
        slots=state.settings.relay_slots,
    )
    response.headers["Location"] = f"/orders/{result.order.id}"
    if result.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return result.order


@orders.post(
    "/orders/{order_id}/cancel",
    response_model=OrderOut,
    summary="Cancel an order (and write its OrderCancelled outbox event, atomically)",
    description="The order becomes `cancelled`, its version goes up by one and an "
    "`OrderCancelled` event with that `aggregateVersion` is written in the same transaction. "
    "Cancelling a cancelled order answers 200 with the same order and writes no second "
    "event, so a plain retry is safe. An `Idempotency-Key` is scoped to the order's user: "
    "the same key on the same order is a replay (header Idempotent-Replayed: true); the same "
    "key used to cancel another order of that user is 409 (naming no order). Only the "
    "order's own user may cancel it: anyone else's cancel is answered as for an unknown id.",
    responses={
        **_AUTH_RESPONSES,
        200: {"description": "Cancelled now, or already cancelled (the same order)."},
        404: {
            "model": ErrorOut,
            "description": "Unknown or malformed order id, or another user's order.",
        },
        409: {
            "model": ErrorOut,
            "description": "Idempotency-Key already used to cancel another order, or the "
            "order is `rejected` (error `order_not_cancellable`, the state named in the message "
            "and in `fields[0]`); nothing was written.",
        },
        413: TOO_LARGE,
        422: INVALID,
        503: UNAVAILABLE,
    },
)
async def post_cancel(
    principal: PrincipalDep,
    order_id: OrderIdPath,
    response: Response,
    state: ReadyStateDep,
    idempotency_key: IdempotencyKeyHeader = None,
    traceparent: TraceparentHeader = None,
) -> OrderOut | JSONResponse:
    oid = parse_object_id(order_id)
    if oid is None:
        return order_not_found(order_id)
    result = await cancel_order(
        state.client,
        oid,
        owner=principal.subject,
        idempotency_key=idempotency_key,
        traceparent=traceparent_for(traceparent),
        metrics=state.metrics,
        deadline_seconds=state.settings.request_deadline_seconds,
        slots=state.settings.relay_slots,
    )
    if result is None:
        return order_not_found(str(oid))
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return result.order


@orders.get(
    "/orders/{order_id}",
    response_model=OrderWithEventsOut,
    summary="An order and its outbox events (watch Pending become Published)",
    description=f"The token's own orders; every order with the realm role `{SUPPORT_ROLE}`.",
    responses={
        **_AUTH_RESPONSES,
        404: {
            "model": ErrorOut,
            "description": "Unknown or malformed order id, or another user's order.",
        },
        503: UNAVAILABLE,
    },
)
async def read_order(
    principal: PrincipalDep, order_id: OrderIdPath, state: ReadyStateDep
) -> OrderWithEventsOut | JSONResponse:
    oid = parse_object_id(order_id)
    if oid is None:
        return order_not_found(order_id)
    found = await get_order(
        oid,
        owner=None if reads_every_order(principal) else principal.subject,
        deadline_seconds=state.settings.request_deadline_seconds,
    )
    if found is None:
        return order_not_found(str(oid))
    return found


@probes.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get(
    "/readyz",
    summary="MongoDB reachable, transaction-capable, indexes in place",
    responses={503: {"description": "Not ready; `checks` says what is missing."}},
)
async def readyz(state: StateDep) -> JSONResponse:
    # Live, not the sampled answer: an orchestrator's probe wants the state now (and the
    # answer refreshes service_ready too).
    checks, reason = await state.readiness.check()
    ok = all(checks.values())
    return JSONResponse(readiness_body(checks, reason), status_code=200 if ok else 503)


@probes.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(state: StateDep) -> Response:
    # service_ready comes from the readiness loop (state.readiness): a scrape never waits for
    # MongoDB, so it answers at once even while MongoDB hangs.
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
