"""The order API's FastAPI application: wiring and lifecycle.

``create_app(settings)`` builds an app whose lifespan opens the MongoDB client, starts binding
Beanie and the indexes (:func:`services.order.state.bind_mongo`, retried in the background while
MongoDB is away) and closes the client at shutdown. The parts live in their own modules: routes
(:mod:`~services.order.routes`), error format and exception handlers
(:mod:`~services.order.errors`), middleware (:mod:`~services.order.middleware`), state and the
readiness dependency (:mod:`~services.order.state`). Bearer tokens are checked by
:mod:`shared.auth` against ``AUTH_*`` (:class:`~shared.auth.AuthSettings`): every order route asks
for one, the probes and the OpenAPI document do not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from fastapi import FastAPI

from services.order.errors import auth_error_response, install_exception_handlers
from services.order.metrics import OrderMetrics
from services.order.middleware import BodyLimitMiddleware, MetricsMiddleware
from services.order.routes import orders, probes
from services.order.settings import OrderSettings
from services.order.state import AppState, bind_mongo
from shared.auth import AuthSettings, TokenValidator
from shared.auth.dependency import install_bearer_auth
from shared.mongo import make_mongo_client

log = logging.getLogger(__name__)

APP_NAME: Final = "order-api"


def _size_text(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} bytes"


def _limits_text(settings: OrderSettings) -> str:
    """This deployment's limits, for the OpenAPI description (read from the settings that set
    them, so the document never states a default the deployment changed)."""
    return (
        f"Request bodies: at most {_size_text(settings.max_body_bytes)} "
        "(`ORDER_MAX_BODY_BYTES`); a larger one is answered 413 before it is read further. "
        f"Database work of one request: at most {settings.request_deadline_seconds:g} s "
        "(`ORDER_REQUEST_TIMEOUT_SECONDS`, capped by `MONGO_TIMEOUT_SECONDS`); past that, or "
        "with MongoDB away, the answer is 503 with Retry-After and nothing is written."
    )


def create_app(settings: OrderSettings, auth: AuthSettings | None = None) -> FastAPI:
    """Build the order API. Nothing touches the network until the lifespan starts (the
    issuer's keys are read when the first token arrives). ``auth``: where bearer tokens come
    from; the ``AUTH_*`` environment when not given."""
    metrics = OrderMetrics()
    validator = TokenValidator(auth if auth is not None else AuthSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, APP_NAME)
        state = AppState(settings=settings, client=client, metrics=metrics)
        app.state.order = state
        binding = asyncio.create_task(bind_mongo(state), name="order-bootstrap")
        state.readiness.start()
        # Wait for the first attempt so a healthy start is ready at once; a failed one goes on in
        # the background and the API answers 503 meanwhile.
        await state.first_attempt_done.wait()
        if state.fatal is not None:
            await state.readiness.stop()
            await client.close()
            raise state.fatal
        try:
            yield
        finally:
            state.stopping.set()
            await state.readiness.stop()
            binding.cancel()
            # Bounded: a cancellation the driver swallowed still ends the loop (``stopping``)
            # once its current attempt returns, which MONGO_TIMEOUT_SECONDS bounds.
            done, _ = await asyncio.wait({binding}, timeout=settings.mongo_timeout_seconds + 1)
            if not done:
                log.warning("start-up binding still running at shutdown; closing the client")
            await client.close()
            await validator.aclose()

    app = FastAPI(
        title="Order API",
        version="1.0.0",
        summary="Creates and cancels orders; each change and its outbox event (OrderCreated, "
        "OrderCancelled) are written in one MongoDB transaction. Kafka is never touched here.",
        description=_limits_text(settings),
        lifespan=lifespan,
    )
    install_exception_handlers(app)
    # After the app's handlers: its own for AuthError is more specific than theirs for Exception.
    install_bearer_auth(app, validator, render=auth_error_response)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    # The routers' own routes, not app.router.routes: FastAPI keeps an included router there as
    # one opaque entry, and the metrics label a 413 (which never reaches the router) by template.
    routes = [*orders.routes, *probes.routes]
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: routes)
    app.include_router(orders)
    app.include_router(probes)
    return app


__all__ = ["AppState", "create_app"]
