"""MongoDB unreachable: 503 with a JSON error within 5 seconds, never a hang, nothing written."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from pymongo.errors import ServerSelectionTimeoutError

from services.order.app import create_app
from services.order.settings import OrderSettings
from stack import Stack
from tests.integration.order.conftest import (
    TEST_DATABASE,
    Api,
    api_through_cuttable_proxy,
    in_process_api,
    order_body,
)
from tests.waiting import WaitTimeout, wait_until

PROMISE_SECONDS = 5.0


@pytest.fixture
async def unreachable_api(stack: Stack, closed_port: int) -> AsyncIterator[httpx.AsyncClient]:
    settings = OrderSettings(
        mongo_uri=f"mongodb://127.0.0.1:{closed_port}/?replicaSet=secantus",
        database=TEST_DATABASE,
    )
    async with in_process_api(settings, stack) as (_, http):
        yield http


async def test_api_started_without_mongodb_answers_503_quickly(
    unreachable_api: httpx.AsyncClient,
) -> None:
    started = time.monotonic()
    response = await unreachable_api.post("/orders", json=order_body())
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["error"] == "service_unavailable"
    assert response.headers["retry-after"] == "1"
    assert elapsed < PROMISE_SECONDS
    assert (await unreachable_api.get(f"/orders/{'a' * 24}")).status_code == 503
    assert (await unreachable_api.get("/healthz")).status_code == 200
    ready = await unreachable_api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["mongo"] is False


async def test_mongodb_vanishing_mid_flight_gives_503_within_5_seconds(
    stack: Stack, api: Api
) -> None:
    async with api_through_cuttable_proxy(stack) as (http, proxy):
        assert (await http.post("/orders", json=order_body())).status_code == 201
        proxy.cut.set()

        started = time.monotonic()
        responses = await asyncio.gather(
            *(
                http.post("/orders", json=order_body(userId=f"u{i}"), headers=api.auth(f"u{i}"))
                for i in range(5)
            )
        )
        elapsed = time.monotonic() - started
        ready = await http.get("/readyz")

    assert [r.status_code for r in responses] == [503] * 5, [r.text for r in responses]
    assert all(r.json()["error"] == "service_unavailable" for r in responses)
    assert elapsed < PROMISE_SECONDS
    assert ready.status_code == 503
    # Only the order from before the cut exists, with its event: nothing half-written.
    assert await api.counts() == (1, 1)


async def test_start_up_retries_are_paced_by_the_backoff_settings(
    caplog: pytest.LogCaptureFixture, closed_port: int
) -> None:
    settings = OrderSettings(
        mongo_uri=f"mongodb://127.0.0.1:{closed_port}/?replicaSet=secantus",
        database=TEST_DATABASE,
        mongo_timeout_seconds=0.3,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.02,
    )
    app = create_app(settings)

    def retry_delays() -> list[float]:
        return [
            float(record.__dict__["delay"])
            for record in caplog.records
            if record.getMessage().startswith("MongoDB not available at start-up")
        ]

    with caplog.at_level(logging.WARNING):
        async with app.router.lifespan_context(app):
            await wait_until(
                lambda: len(retry_delays()) >= 3, timeout=30, message="three start-up retries"
            )

    # ORDER_BACKOFF_MAX_SECONDS caps every pause (plus the 20% jitter), the first one included.
    assert all(delay <= 0.02 * 1.2 for delay in retry_delays()), retry_delays()


async def test_shutdown_ends_the_start_up_retries_even_when_a_driver_call_eats_the_cancel(
    caplog: pytest.LogCaptureFixture, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that races its inner
    future (CPython gh-86296), and the driver waits that way: a cancelled start-up attempt may
    come back as an ordinary connection error. Shutdown must still end the retry loop, within a
    bound, instead of leaving it retrying (the suite saw a lifespan exit hang for 300 s)."""
    settings = OrderSettings(
        mongo_uri=f"mongodb://127.0.0.1:{closed_port}/?replicaSet=secantus",
        database=TEST_DATABASE,
        mongo_timeout_seconds=0.5,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.02,
    )
    attempts = 0

    async def init_that_eats_the_cancel(**_: object) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:  # the lifespan waits for a first attempt: let it fail at once
            raise ServerSelectionTimeoutError("nobody listens")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise ServerSelectionTimeoutError("cancelled wait came back as a timeout") from None

    monkeypatch.setattr("services.order.state.init_beanie", init_that_eats_the_cancel)
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    await wait_until(lambda: attempts >= 2, timeout=10, message="a retry in flight")

    # The lifespan's exit is bounded: it must return well inside the test's own timeout.
    await asyncio.wait_for(lifespan.__aexit__(None, None, None), timeout=15)
    attempts_at_exit = attempts
    # No attempt starts after shutdown: the loop is gone, not retrying in the background.
    with pytest.raises(WaitTimeout):
        await wait_until(lambda: attempts > attempts_at_exit, timeout=1, message="no retry")
