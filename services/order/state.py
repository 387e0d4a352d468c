"""The order API's per-app state, its binding to MongoDB at start-up, and the route dependencies.

Start-up does not need MongoDB: :func:`bind_mongo` retries in the background, with the service's
backoff settings, until Beanie is bound and the indexes exist. Until then :data:`ReadyStateDep`
answers 503, so an orchestrator can start the API and the database in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Annotated

import pymongo
from beanie import init_beanie
from fastapi import Depends, Request
from pymongo.errors import PyMongoError

from services.order.errors import ServiceUnavailable
from services.order.indexes import ensure_order_indexes
from services.order.metrics import OrderMetrics
from services.order.models import Order, OutboxEvent
from services.order.settings import OrderSettings
from shared.health import READY_TIMEOUT_SECONDS, ReadinessSampler
from shared.mongo import IndexConflict, MongoClient, transactions_supported

log = logging.getLogger(__name__)


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
    # Set at shutdown. The retry loop checks it besides being cancelled: on Python 3.11 a
    # cancellation racing the driver's internal ``asyncio.wait_for`` can be swallowed
    # (CPython gh-86296) and come back as an ordinary connection error.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # The readiness answer: /readyz runs it live, service_ready reads its latest sample.
    readiness: ReadinessSampler = field(init=False)

    def __post_init__(self) -> None:
        self.readiness = ReadinessSampler(lambda: ready_checks(self), self.metrics.ready)


async def ready_checks(state: AppState) -> tuple[dict[str, bool], str | None]:
    """What /readyz answers: indexes in place, MongoDB reachable and transaction-capable; and
    why the MongoDB probe failed, if it did."""
    checks = {"indexes": state.ready.is_set(), "mongo": False, "transactions": False}
    reason: str | None = None
    try:
        with pymongo.timeout(min(READY_TIMEOUT_SECONDS, state.settings.mongo_timeout_seconds)):
            checks["transactions"] = await transactions_supported(state.client)
        checks["mongo"] = True
    except PyMongoError as exc:
        reason = repr(exc)
        log.warning("readiness check failed", extra={"reason": reason})
    return checks, reason


async def bind_mongo(state: AppState) -> None:
    """Bind Beanie and create indexes, retrying with the settings' backoff until MongoDB answers.

    An index conflict is not retried: it is recorded in ``state.fatal`` (see the lifespan).
    """
    settings = state.settings
    database = state.client[settings.database]
    backoff = settings.backoff()
    while not state.stopping.is_set():
        try:
            with pymongo.timeout(settings.mongo_timeout_seconds):
                await init_beanie(
                    database=database, document_models=[Order, OutboxEvent], skip_indexes=True
                )
                await ensure_order_indexes(database, settings)
        except IndexConflict as exc:
            # Not retried: the existing index will not change by itself. At start-up this fails
            # the lifespan (the process exits 1); later it is logged and /readyz stays 503.
            log.critical("cannot create the indexes", extra={"reason": str(exc)})
            state.fatal = exc
            state.first_attempt_done.set()
            return
        except PyMongoError as exc:
            state.first_attempt_done.set()
            if state.stopping.is_set():
                return
            delay = backoff.next_delay()
            log.warning(
                "MongoDB not available at start-up, retrying",
                extra={"reason": repr(exc), "delay": round(delay, 3)},
            )
            # The pause between reconnection attempts, cut short by shutdown.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.stopping.wait(), timeout=delay)
            continue
        state.ready.set()
        state.first_attempt_done.set()
        log.info("order API bound to MongoDB", extra={"database": settings.database})
        return


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.order
    return state


def _ready_state(state: Annotated[AppState, Depends(_state)]) -> AppState:
    if not state.ready.is_set():
        raise ServiceUnavailable("database unavailable since start-up; nothing was written")
    return state


# The app's state, for routes that work without MongoDB (the probes).
StateDep = Annotated[AppState, Depends(_state)]
# The app's state once MongoDB is bound; 503 before that (routes that read or write orders).
ReadyStateDep = Annotated[AppState, Depends(_ready_state)]
