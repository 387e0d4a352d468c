"""Entry point and lifecycle of the email consumer."""

from __future__ import annotations

import asyncio

from services.email.handlers import SERVICE, make_sender
from services.email.settings import EmailSettings
from shared.consumer import Route, order_routes, run_consumer_service
from shared.events import OrderEvent, parse_order_cancelled, parse_order_created
from shared.redis import make_redis


async def run(settings: EmailSettings, stop: asyncio.Event | None = None) -> int:
    """Consume ``order.created`` and ``order.cancelled`` until SIGTERM (or ``stop``); 0 after a
    clean drain."""
    redis = make_redis(settings.redis_url)
    routes: dict[str, Route[OrderEvent]] = order_routes(
        settings, parse_order_created, parse_order_cancelled
    )

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
            parse=parse_order_created,
            handler=make_sender(settings, redis).handle,
            redis=redis,
            extra_ready={"smtp": smtp_ready},
            stop=stop,
            routes=routes,
        )
    finally:
        await redis.aclose()
