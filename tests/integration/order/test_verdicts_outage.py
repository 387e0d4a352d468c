"""A MongoDB outage is waited out by the verdict consumer, never dead-lettered: the verdict that
arrives while the database is a black hole moves its order once the database is back."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.contracts import EVENT_STOCK_RESERVED
from stack import Stack
from tests.cuttable_proxy import CuttableProxy
from tests.integration.order.conftest import Api, order_body
from tests.integration.order.verdict_world import reserved, verdict_world
from tests.waiting import wait_until

TIMEOUT = 60
# The consumer's deadline per MongoDB operation: short, so the outage shows as many retries.
DEADLINE_SECONDS = 1.0


def _retried_transient(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for r in caplog.records
        if r.getMessage() == "attempt failed, retrying" and getattr(r, "fault", "") == "transient"
    )


async def test_a_mongodb_outage_is_waited_out_and_dead_letters_nothing(
    stack: Stack, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    response = await api.http.post("/orders", json=order_body())
    order: dict[str, Any] = response.json()
    target = urlsplit(stack.config.mongo_uri)
    assert target.hostname is not None and target.port is not None
    async with (
        CuttableProxy(target.hostname, target.port) as proxy,
        verdict_world(stack, api.settings.database) as world,
    ):
        world.start(
            # directConnection: the driver must not discover the real address and bypass it.
            mongo_uri=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true",
            mongo_timeout_seconds=DEADLINE_SECONDS,
            # A single failure of unknown kind would dead-letter: an outage must not be one.
            max_unknown_attempts=1,
        )
        proxy.cut.set()
        await world.send(reserved(order))
        await wait_until(
            lambda: _retried_transient(caplog) >= 3, timeout=TIMEOUT, message="retries"
        )

        proxy.cut.clear()

        async def confirmed() -> bool:
            body = (await api.http.get(f"/orders/{order['id']}")).json()
            return bool(body["status"] == "confirmed")

        await wait_until(confirmed, timeout=TIMEOUT, message="confirmed after the outage")
        assert await world.dlq(EVENT_STOCK_RESERVED) == []
