"""Fixtures for the order API's integration tests: the app in-process against the stack's MongoDB.

Every test gets a freshly dropped database of its own name, so it sees only its own documents
(the stack is shared by the whole suite; the contract's `orders` database belongs to the e2e
tests).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from services.order import app as app_module
from services.order.app import create_app
from services.order.settings import OrderSettings
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from stack import Stack
from tests.cuttable_proxy import CuttableProxy
from tests.mongo_commands import CommandLog

TEST_DATABASE = "orders_api_it"


@dataclass
class Api:
    http: httpx.AsyncClient
    app: FastAPI
    settings: OrderSettings
    mongo: MongoClient

    @property
    def db(self) -> Any:
        return self.mongo[self.settings.database]

    @property
    def outbox(self) -> Any:
        return self.db[OUTBOX_COLLECTION]

    async def counts(self) -> tuple[int, int]:
        """(orders, outbox events) in the test database."""
        return (
            await self.db.orders.count_documents({}),
            await self.outbox.count_documents({}),
        )


def order_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "userId": "user-1",
        "customerEmail": "buyer@example.com",
        "items": [
            {"sku": "SKU-A", "quantity": 2, "unitPrice": "12.50"},
            {"sku": "SKU-B", "quantity": 3, "unitPrice": "0.10"},
        ],
    }
    body.update(overrides)
    return body


@pytest.fixture
async def mongo(stack: Stack) -> AsyncIterator[MongoClient]:
    client = make_mongo_client(stack.config.mongo_uri, 5.0, "order-tests")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def commands() -> CommandLog:
    """Every command the API's own MongoDB client sends (for tests that count round trips)."""
    return CommandLog()


@contextlib.asynccontextmanager
async def in_process_api(
    settings: OrderSettings,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The API with ``settings``, in this process (lifespan run), and a client of it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://order.test") as http:
            yield app, http


@pytest.fixture
async def api(
    stack: Stack, mongo: MongoClient, commands: CommandLog, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    settings = OrderSettings(mongo_uri=stack.config.mongo_uri, database=TEST_DATABASE)
    await mongo.drop_database(TEST_DATABASE)
    monkeypatch.setattr(
        app_module,
        "make_mongo_client",
        functools.partial(make_mongo_client, event_listeners=[commands]),
    )
    async with in_process_api(settings) as (app, http):
        yield Api(http=http, app=app, settings=settings, mongo=mongo)


@contextlib.asynccontextmanager
async def api_through_cuttable_proxy(
    stack: Stack,
) -> AsyncIterator[tuple[httpx.AsyncClient, CuttableProxy]]:
    """The API in-process, reaching the stack's MongoDB through a proxy the test can cut."""
    target = urlsplit(stack.config.mongo_uri)
    assert target.hostname is not None and target.port is not None
    async with CuttableProxy(target.hostname, target.port) as proxy:
        # directConnection: the driver must not discover the real address and bypass the proxy.
        settings = OrderSettings(
            mongo_uri=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true",
            database=TEST_DATABASE,
        )
        async with in_process_api(settings) as (_, http):
            yield http, proxy
