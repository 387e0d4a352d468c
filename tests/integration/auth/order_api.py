"""The order API as a stack process for a test, in a database of its own, as a client."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from shared.mongo import make_mongo_client
from stack import Stack


@asynccontextmanager
async def running_order_api(stack: Stack, tag: str) -> AsyncIterator[httpx.AsyncClient]:
    """Start ``order`` on ``stack`` (it trusts the issuer the stack runs at that moment: Keycloak's
    realm if Keycloak is running, else the development issuer), yield a client of it, then stop
    it and drop its database."""
    database = f"{tag}_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(stack.start, "order", {"ORDER_DATABASE": database})
    try:
        url = f"http://127.0.0.1:{stack.port_of('order')}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield http
    finally:
        await asyncio.to_thread(stack.stop, "order")
        mongo = make_mongo_client(stack.config.mongo_uri, 10.0, "auth-test-cleanup")
        try:
            await mongo.drop_database(database)
        finally:
            await mongo.close()
