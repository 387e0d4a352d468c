"""The order API's FastAPI application: routes, error mapping, lifecycle.

``create_app(settings)`` builds an app whose lifespan opens the MongoDB client, binds the Beanie
documents and creates the indexes, and closes the client at shutdown. Start-up does not need
MongoDB: if it is away the app starts anyway, answers 503 (and ``/readyz`` says not ready) and
keeps trying in the background, so an orchestrator can start the API and the database in any
order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import pymongo
from beanie import init_beanie
from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.order.cancel import cancel_order
from services.order.handlers import IdempotencyConflict, create_order, get_order, traceparent_for
from services.order.metrics import OrderMetrics
from services.order.models import Order, OutboxEvent, order_indexes
from services.order.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    CreateOrderRequest,
    ErrorOut,
    FieldError,
    OrderOut,
    OrderWithEventsOut,
)
from services.order.settings import OrderSettings
from shared.backoff import Backoff
from shared.errors import FaultKind, classify
from shared.health import READY_TIMEOUT_SECONDS, readiness_body
from shared.mongo import (
    IndexConflict,
    MongoClient,
    ensure_indexes,
    make_mongo_client,
    transactions_supported,
)
from shared.outbox import ensure_outbox_indexes

log = logging.getLogger(__name__)

APP_NAME: Final = "order-api"


@dataclass
class AppState:
    settings: OrderSettings
    client: MongoClient
    metrics: OrderMetrics
    # Set once Beanie is bound and the indexes exist; until then requests get 503.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    first_attempt_done: asyncio.Event = field(default_factory=asyncio.Event)
    # An error retrying cannot cure (an index conflict): the API never becomes ready.
    fatal: Exception | None = None


class ServiceUnavailable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _get_state(request: Request) -> AppState:
    state: AppState = request.app.state.order
    return state


StateDep = Annotated[AppState, Depends(_get_state)]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="1-255 printable ASCII characters. Same key and body: the original order "
        "(200, Idempotent-Replayed: true); same key, other body: 409.",
    ),
]
TraceparentHeader = Annotated[
    str | None,
    Header(
        description="W3C trace context. Stored with the outbox event (the relay puts it into "
        "the Kafka headers); a new trace is started when absent or invalid."
    ),
]


def _error(
    status: int,
    error: str,
    message: str,
    fields: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorOut(error=error, message=message, fields=fields or [])
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


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


async def _ensure_indexes(database: AsyncDatabase[dict[str, Any]], settings: OrderSettings) -> None:
    """Create the orders' and the outbox's indexes; idempotent, and loud on a conflict."""
    await ensure_indexes(database[Order.Settings.name], order_indexes())
    await ensure_outbox_indexes(
        database[OutboxEvent.Settings.name], settings.outbox_published_ttl_seconds
    )


async def _bootstrap(state: AppState) -> None:
    """Bind Beanie and create indexes, retrying with backoff until MongoDB answers."""
    settings = state.settings
    database = state.client[settings.database]
    backoff = Backoff(initial=0.2, maximum=5.0)
    while True:
        try:
            with pymongo.timeout(settings.mongo_timeout_seconds):
                await init_beanie(
                    database=database, document_models=[Order, OutboxEvent], skip_indexes=True
                )
                await _ensure_indexes(database, settings)
        except IndexConflict as exc:
            # Not retried: the existing index will not change by itself. At start-up this fails
            # the lifespan (the process exits 1); later it is logged and /readyz stays 503.
            log.critical("cannot create the indexes", extra={"reason": str(exc)})
            state.fatal = exc
            state.first_attempt_done.set()
            return
        except PyMongoError as exc:
            state.first_attempt_done.set()
            delay = backoff.next_delay()
            log.warning(
                "MongoDB not available at start-up, retrying",
                extra={"reason": repr(exc), "delay": round(delay, 2)},
            )
            # Not a synchronisation sleep: the pause between reconnection attempts.
            await asyncio.sleep(delay)
            continue
        state.ready.set()
        state.first_attempt_done.set()
        log.info("order API bound to MongoDB", extra={"database": settings.database})
        return


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, without reading more than that.

    A declared Content-Length over the limit is refused before a byte of the body is read; a
    chunked body is read until it crosses the limit. The accepted body is handed on as is.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(
            413,
            "payload_too_large",
            f"request body exceeds {self.limit} bytes",
            [FieldError(field="body", message=f"at most {self.limit} bytes", type="too_large")],
            # The unread rest of the body makes the connection unusable for another request.
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class MetricsMiddleware:
    """Count requests and time them by method, route template and status."""

    def __init__(
        self, app: ASGIApp, metrics: OrderMetrics, routes: Callable[[], list[Any]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _route_of(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return str(route.path)
        # 413s never reach the router: find the template ourselves. Unknown paths share one
        # label so a scanner cannot blow up the series count.
        for candidate in self.routes():
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                return str(candidate.path)
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            labels = (scope["method"], self._route_of(scope), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)


def _unavailable(message: str) -> JSONResponse:
    # Retry-After: the client may try again soon; with an Idempotency-Key that is always safe.
    return _error(503, "service_unavailable", message, headers={"Retry-After": "1"})


def _order_not_found(order_id: str) -> JSONResponse:
    return _error(
        404,
        "order_not_found",
        f"no order with id {order_id!r}",
        [FieldError(field="order_id", message="unknown order", type="not_found")],
    )


_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    413: {"model": ErrorOut, "description": "Body larger than 64 KiB; nothing read further."},
    422: {"model": ErrorOut, "description": "Invalid body or header; `fields` names each one."},
    503: {
        "model": ErrorOut,
        "description": "MongoDB unreachable or too slow (answered within "
        "5 s); nothing was written. Safe to retry with the same Idempotency-Key.",
    },
}


def create_app(settings: OrderSettings) -> FastAPI:
    """Build the order API. Nothing touches the network until the lifespan starts."""
    metrics = OrderMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, APP_NAME)
        state = AppState(settings=settings, client=client, metrics=metrics)
        app.state.order = state
        bootstrap = asyncio.create_task(_bootstrap(state), name="order-bootstrap")
        # Wait for the first attempt so a healthy start is ready at once; a failed one goes on in
        # the background and the API answers 503 meanwhile.
        await state.first_attempt_done.wait()
        if state.fatal is not None:
            await client.close()
            raise state.fatal
        try:
            yield
        finally:
            bootstrap.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bootstrap
            await client.close()

    app = FastAPI(
        title="Order API",
        version="1.0.0",
        summary="Creates and cancels orders; each change and its outbox event (OrderCreated, "
        "OrderCancelled) are written in one MongoDB transaction. Kafka is never touched here.",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _validation_fields(exc)
        names = ", ".join(sorted({f.field for f in fields}))
        return _error(422, "validation_error", f"invalid request: {names}", fields)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(IdempotencyConflict)
    async def _on_conflict(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        return _error(
            409,
            "idempotency_key_reused",
            f"{exc} (order {exc.order_id}); use a new key for a new order",
            [
                FieldError(
                    field="Idempotency-Key",
                    message="already used for another body",
                    type="conflict",
                )
            ],
        )

    @app.exception_handler(ServiceUnavailable)
    async def _on_unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return _unavailable(exc.message)

    @app.exception_handler(PyMongoError)
    async def _on_mongo(_: Request, exc: PyMongoError) -> JSONResponse:
        if exc.has_error_label("UnknownTransactionCommitResult"):
            log.error("commit outcome unknown", extra={"reason": repr(exc)})
            return _unavailable(
                "database did not confirm the commit in time; the order may "
                "exist: retry with the same Idempotency-Key"
            )
        if exc.timeout or classify(exc) is FaultKind.TRANSIENT:
            log.warning("database unavailable", extra={"reason": repr(exc)})
            return _unavailable("database unavailable; nothing was written")
        log.error("database error", extra={"reason": repr(exc)})
        return _error(
            500, "database_error", "the database refused the transaction; nothing was written"
        )

    @app.exception_handler(Exception)
    async def _on_bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error(500, "internal_error", "unexpected error; nothing was written")

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.router.routes)

    def require_ready(state: AppState) -> None:
        if not state.ready.is_set():
            raise ServiceUnavailable("database unavailable since start-up; nothing was written")

    @app.post(
        "/orders",
        status_code=201,
        response_model=OrderOut,
        summary="Create an order (and its OrderCreated outbox event, atomically)",
        responses={
            200: {
                "model": OrderOut,
                "description": "Idempotent replay: the order first created "
                "with this Idempotency-Key and body; header Idempotent-Replayed: true.",
            },
            201: {"description": "Created; Location: /orders/{id}."},
            409: {
                "model": ErrorOut,
                "description": "Idempotency-Key already used with another body.",
            },
            **_ERRORS,
        },
    )
    async def post_order(
        body: CreateOrderRequest,
        response: Response,
        state: StateDep,
        idempotency_key: IdempotencyKeyHeader = None,
        traceparent: TraceparentHeader = None,
    ) -> OrderOut:
        require_ready(state)
        result = await create_order(
            state.client,
            body,
            idempotency_key=idempotency_key,
            traceparent=traceparent_for(traceparent),
            metrics=state.metrics,
            deadline_seconds=state.settings.request_deadline_seconds,
        )
        response.headers["Location"] = f"/orders/{result.order.id}"
        if result.replayed:
            response.status_code = 200
            response.headers["Idempotent-Replayed"] = "true"
        return result.order

    @app.post(
        "/orders/{order_id}/cancel",
        response_model=OrderOut,
        summary="Cancel an order (and write its OrderCancelled outbox event, atomically)",
        description="The order becomes `cancelled`, its version goes up by one and an "
        "`OrderCancelled` event with that `aggregateVersion` is written in the same transaction. "
        "Cancelling a cancelled order answers 200 with the same order and writes no second "
        "event, so a plain retry is safe. An `Idempotency-Key` is scoped to the order's user: "
        "the same key on the same order is a replay (header Idempotent-Replayed: true); the same "
        "key used to cancel another order of that user is 409.",
        responses={
            200: {"description": "Cancelled now, or already cancelled (the same order)."},
            404: {"model": ErrorOut, "description": "Unknown or malformed order id."},
            409: {
                "model": ErrorOut,
                "description": "Idempotency-Key already used to cancel another order.",
            },
            422: _ERRORS[422],
            503: _ERRORS[503],
        },
    )
    async def post_cancel(
        order_id: str,
        response: Response,
        state: StateDep,
        idempotency_key: IdempotencyKeyHeader = None,
        traceparent: TraceparentHeader = None,
    ) -> OrderOut | JSONResponse:
        require_ready(state)
        result = await cancel_order(
            state.client,
            order_id,
            idempotency_key=idempotency_key,
            traceparent=traceparent_for(traceparent),
            metrics=state.metrics,
            deadline_seconds=state.settings.request_deadline_seconds,
        )
        if result is None:
            return _order_not_found(order_id)
        if result.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return result.order

    @app.get(
        "/orders/{order_id}",
        response_model=OrderWithEventsOut,
        summary="An order and its outbox events (watch Pending become Published)",
        responses={
            404: {"model": ErrorOut, "description": "Unknown or malformed order id."},
            503: _ERRORS[503],
        },
    )
    async def read_order(order_id: str, state: StateDep) -> OrderWithEventsOut | JSONResponse:
        require_ready(state)
        found = await get_order(order_id, deadline_seconds=state.settings.request_deadline_seconds)
        if found is None:
            return _order_not_found(order_id)
        return found

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="MongoDB reachable, transaction-capable, indexes in place",
        responses={503: {"description": "Not ready; `checks` says what is missing."}},
    )
    async def readyz(state: StateDep) -> JSONResponse:
        checks = {"indexes": state.ready.is_set(), "mongo": False, "transactions": False}
        reason: str | None = None
        try:
            with pymongo.timeout(min(READY_TIMEOUT_SECONDS, state.settings.mongo_timeout_seconds)):
                checks["transactions"] = await transactions_supported(state.client)
            checks["mongo"] = True
        except PyMongoError as exc:
            reason = repr(exc)
            log.warning("readiness check failed", extra={"reason": reason})
        ok = all(checks.values())
        return JSONResponse(readiness_body(checks, reason), status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["AppState", "create_app"]
