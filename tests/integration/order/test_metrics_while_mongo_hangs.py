"""A Prometheus scrape of the order API never waits for MongoDB: while MongoDB hangs (a black
hole, no byte back), /metrics answers before a readiness check could even time out, and
``service_ready`` still turns 0 from the readiness loop."""

from __future__ import annotations

import asyncio

from shared.health import READY_METRIC, READY_TIMEOUT_SECONDS
from stack import Stack
from tests.integration.order.conftest import api_through_cuttable_proxy
from tests.waiting import wait_until


async def test_a_scrape_answers_before_the_readiness_timeout_while_mongodb_hangs(
    stack: Stack,
) -> None:
    async with api_through_cuttable_proxy(stack) as (http, proxy):

        async def gauge_is(expected: str) -> bool:
            text = (await http.get("/metrics")).text
            return f"\n{READY_METRIC} {expected}\n" in text

        await wait_until(lambda: gauge_is("1.0"), timeout=30, message="service_ready 1")
        proxy.cut.set()
        # Every readiness check now hangs on MongoDB until its READY_TIMEOUT_SECONDS.
        # Answered before that bound (counted from before the request): the old route
        # ran the check itself and answered only once it timed out.
        scrape = await asyncio.wait_for(http.get("/metrics"), READY_TIMEOUT_SECONDS)
        assert scrape.status_code == 200
        # The readiness loop still sees MongoDB gone, within a sample and a timeout.
        await wait_until(lambda: gauge_is("0.0"), timeout=30, message="service_ready 0")
