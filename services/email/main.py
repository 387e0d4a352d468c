"""Entry point and lifecycle of the email consumer."""

from __future__ import annotations

import asyncio

from services.email.handlers import SERVICE, EmailEvent, make_sender
from services.email.settings import EmailSettings
from shared.consumer import Route, run_consumer_service
from shared.contracts import EVENT_ORDER_CANCELLED, EVENT_STOCK_REJECTED, EVENT_STOCK_RESERVED
from shared.events import parse_order_cancelled, parse_stock_rejected, parse_stock_reserved
from shared.redis import make_redis


def email_routes(settings: EmailSettings) -> dict[str, Route[EmailEvent]]:
    """The three topics whose events each send one mail: the two verdicts and the cancel."""
    return {
        settings.reserved_topic: Route[EmailEvent](EVENT_STOCK_RESERVED, parse_stock_reserved),
        settings.rejected_topic: Route[EmailEvent](EVENT_STOCK_REJECTED, parse_stock_rejected),
        settings.cancelled_topic: Route[EmailEvent](EVENT_ORDER_CANCELLED, parse_order_cancelled),
    }


async def run(settings: EmailSettings, stop: asyncio.Event | None = None) -> int:
    """Consume ``inventory.reserved``, ``inventory.rejected`` and ``order.cancelled`` until
    SIGTERM (or ``stop``); 0 after a clean drain."""
    redis = make_redis(settings.redis_url)
    routes = email_routes(settings)

    async def smtp_ready() -> bool:
        # A TCP connect is enough to know the relay host is there; a full SMTP hello on every
        # probe would fill the sink's log.
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(settings.smtp_host, settings.smtp_port), timeout=2
        )
        writer.close()
        return True

    try:
        return await run_consumer_service(
            settings,
            service=SERVICE,
            parse=routes[settings.reserved_topic].parse,
            handler=make_sender(settings, redis).handle,
            redis=redis,
            extra_ready={"smtp": smtp_ready},
            stop=stop,
            routes=routes,
        )
    finally:
        await redis.aclose()
