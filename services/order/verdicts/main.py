"""Entry point and lifecycle of the order service's verdict consumer."""

from __future__ import annotations

import asyncio

from services.order.verdicts.handlers import VerdictHandler
from services.order.verdicts.settings import VerdictSettings
from shared.consumer import Route, run_consumer_service
from shared.contracts import EVENT_STOCK_REJECTED, EVENT_STOCK_RELEASED, EVENT_STOCK_RESERVED
from shared.events import (
    InventoryEvent,
    parse_stock_rejected,
    parse_stock_released,
    parse_stock_reserved,
)
from shared.mongo import make_mongo_client, ping_check
from shared.redis import make_redis

# The dedup key space and the metrics' service label.
SERVICE = "order-verdicts"


def verdict_routes(settings: VerdictSettings) -> dict[str, Route[InventoryEvent]]:
    """Inventory's three topics: the two verdicts, and the release (recorded in the history)."""
    return {
        settings.topic: Route[InventoryEvent](EVENT_STOCK_RESERVED, parse_stock_reserved),
        settings.rejected_topic: Route[InventoryEvent](EVENT_STOCK_REJECTED, parse_stock_rejected),
        settings.released_topic: Route[InventoryEvent](EVENT_STOCK_RELEASED, parse_stock_released),
    }


async def run(settings: VerdictSettings, stop: asyncio.Event | None = None) -> int:
    """Consume inventory's verdicts until SIGTERM (or ``stop``); 0 after a clean drain."""
    mongo = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, SERVICE)
    redis = make_redis(settings.redis_url)
    routes = verdict_routes(settings)
    try:
        return await run_consumer_service(
            settings,
            service=SERVICE,
            parse=routes[settings.topic].parse,
            handler=VerdictHandler(mongo, settings.database).handle,
            redis=redis,
            extra_ready={"mongo": ping_check(mongo)},
            stop=stop,
            routes=routes,
        )
    finally:
        await redis.aclose()
        await mongo.close()
