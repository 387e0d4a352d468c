"""/metrics carries the readiness answer as ``service_ready`` (what ServiceNotReady alerts on),
sampled by a loop: a scrape never waits for a readiness check, so it answers at once even while
a dependency hangs, and an answer too old to trust reads as not ready."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import CollectorRegistry, Gauge

from shared.health import (
    READY_METRIC,
    READY_TIMEOUT_SECONDS,
    HealthServer,
    ReadinessSampler,
    readiness_gauge,
)
from tests.waiting import wait_until


async def test_metrics_follow_the_readiness_loop() -> None:
    checks = {"kafka": True, "redis": False}

    async def ready() -> dict[str, bool]:
        return dict(checks)

    server = HealthServer("127.0.0.1", 0, ready, CollectorRegistry(), ready_sample_seconds=0.05)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:

            async def gauge_reads(value: str) -> bool:
                return f"\n{READY_METRIC} {value}\n" in (await http.get("/metrics")).text

            await wait_until(lambda: gauge_reads("0.0"), timeout=10, message="not ready")
            checks["redis"] = True
            await wait_until(lambda: gauge_reads("1.0"), timeout=10, message="ready")
    finally:
        await server.stop()


async def test_a_scrape_answers_before_the_readiness_timeout_while_a_check_hangs() -> None:
    entered = asyncio.Event()
    never = asyncio.Event()  # the dependency that never answers

    async def hanging() -> dict[str, bool]:
        entered.set()
        await never.wait()
        return {"mongo": True}

    server = HealthServer("127.0.0.1", 0, hanging, CollectorRegistry())
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            # Answered before a check could time out (READY_TIMEOUT_SECONDS from before the
            # request): the old /metrics ran the checks itself and answered only after that.
            scrape = await asyncio.wait_for(http.get("/metrics"), timeout=READY_TIMEOUT_SECONDS)
        assert entered.is_set()  # a readiness check was hanging meanwhile
        assert scrape.status_code == 200
        # No answer yet is no evidence of readiness.
        assert f"\n{READY_METRIC} 0.0\n" in scrape.text
    finally:
        await server.stop()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sampler(clock: _Clock, checks: dict[str, bool]) -> tuple[ReadinessSampler, Gauge]:
    async def probe() -> tuple[dict[str, bool], str | None]:
        return dict(checks), None

    gauge = readiness_gauge(CollectorRegistry())
    return ReadinessSampler(probe, gauge, interval=5, max_age=18, clock=clock), gauge


async def test_the_gauge_is_ready_only_for_a_passing_sample_no_older_than_the_bound() -> None:
    clock = _Clock()
    checks = {"mongo": True, "kafka": True}
    sampler, _ = _sampler(clock, checks)
    assert sampler.value() == 0.0  # before the first sample
    await sampler.check()
    assert sampler.value() == 1.0
    clock.now += 18
    assert sampler.value() == 1.0  # at the bound
    clock.now += 0.5
    assert sampler.value() == 0.0  # a stalled loop's old "ready" is not believed
    checks["kafka"] = False
    await sampler.check()
    assert sampler.value() == 0.0


async def test_the_gauge_value_is_read_at_scrape_from_the_sampler() -> None:
    clock = _Clock()
    registry = CollectorRegistry()

    async def probe() -> tuple[dict[str, bool], str | None]:
        return {"mongo": True}, None

    sampler = ReadinessSampler(probe, readiness_gauge(registry), max_age=10, clock=clock)
    await sampler.check()
    assert registry.get_sample_value(READY_METRIC) == 1.0
    clock.now += 11
    assert registry.get_sample_value(READY_METRIC) == 0.0
