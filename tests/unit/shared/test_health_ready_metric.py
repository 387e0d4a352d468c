"""/metrics carries the readiness answer as ``service_ready`` (what ServiceNotReady alerts on)."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry

from shared.health import READY_METRIC, HealthServer


async def test_metrics_sample_the_readiness_checks_at_each_scrape() -> None:
    checks = {"kafka": True, "redis": False}

    async def ready() -> dict[str, bool]:
        return dict(checks)

    server = HealthServer("127.0.0.1", 0, ready, CollectorRegistry())
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            assert f"\n{READY_METRIC} 0.0\n" in (await http.get("/metrics")).text
            checks["redis"] = True
            assert f"\n{READY_METRIC} 1.0\n" in (await http.get("/metrics")).text
    finally:
        await server.stop()
