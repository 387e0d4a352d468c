"""Fixtures for the order API's integration tests: the app in-process against the stack's MongoDB.

Every test gets a freshly dropped database of its own name, so it sees only its own documents
(the stack is shared by the whole suite; the contract's `orders` database belongs to the e2e
tests).

Every order route asks for a bearer token: the API trusts the stack's running development issuer
(``stack.config.auth_env()``), and tokens are signed with that issuer's key. ``api.http`` sends a
token of :data:`DEFAULT_USER` (the ``userId`` of :func:`order_body`) on every request;
``api.auth(user)`` gives another user's headers (per-request headers replace the default), and
``api.anonymous`` is a client that sends none.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from services.order import app as app_module
from services.order.app import create_app
from services.order.settings import OrderSettings
from shared.auth import AuthSettings
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from stack import Stack
from stack.issuer import load_or_create_key, mint_token
from tests.cuttable_proxy import CuttableProxy
from tests.mongo_commands import CommandLog

TEST_DATABASE = "orders_api_it"
# Whose token api.http sends, and the userId of order_body().
DEFAULT_USER = "user-1"


@functools.cache
def _issuer_key(path: Path) -> ec.EllipticCurvePrivateKey:
    # The running issuer made it at start-up; read once per session.
    return load_or_create_key(path)


def token_for(stack: Stack, user: str, *, roles: Iterable[str] = (), **claims: Any) -> str:
    """A token of the stack's development issuer for ``user`` (``claims``: mint_token's other
    arguments, e.g. ``ttl_seconds``, ``audience``, ``now``)."""
    key = _issuer_key(stack.config.issuer_key_path)
    return mint_token(key, issuer=stack.config.issuer_url, subject=user, roles=roles, **claims)


def bearer(stack: Stack, user: str, *, roles: Iterable[str] = (), **claims: Any) -> dict[str, str]:
    """The ``Authorization`` header of a request by ``user``."""
    return {"Authorization": f"Bearer {token_for(stack, user, roles=roles, **claims)}"}


def auth_settings(stack: Stack, **overrides: Any) -> AuthSettings:
    """What the stack's order API trusts (its development issuer), with ``overrides``."""
    return AuthSettings.model_validate({**stack.config.auth_env(), **overrides})


@dataclass
class Api:
    # Sends DEFAULT_USER's token on every request.
    http: httpx.AsyncClient
    app: FastAPI
    settings: OrderSettings
    mongo: MongoClient
    stack: Stack
    # The same app, without any Authorization header.
    anonymous: httpx.AsyncClient

    def auth(self, user: str, *, roles: Iterable[str] = (), **claims: Any) -> dict[str, str]:
        """Headers of a request by ``user`` (pass as ``headers=``; they replace the default
        token)."""
        return bearer(self.stack, user, roles=roles, **claims)

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
        "userId": DEFAULT_USER,
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
def closed_port() -> Iterator[int]:
    """A port nobody listens on, held for the whole test: bound but not listening, so connecting
    is refused, and no other process (another test stack on this machine) can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def commands() -> CommandLog:
    """Every command the API's own MongoDB client sends (for tests that count round trips)."""
    return CommandLog()


@contextlib.asynccontextmanager
async def in_process_api(
    settings: OrderSettings, stack: Stack, auth: AuthSettings | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The API with ``settings``, in this process (lifespan run), trusting ``auth`` (the
    stack's issuer by default), and a client of it sending DEFAULT_USER's token."""
    app = create_app(settings, auth or auth_settings(stack))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://order.test",
            headers=bearer(stack, DEFAULT_USER),
        ) as http:
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
    async with (
        in_process_api(settings, stack) as (app, http),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://order.test"
        ) as anonymous,
    ):
        yield Api(
            http=http, app=app, settings=settings, mongo=mongo, stack=stack, anonymous=anonymous
        )


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
        async with in_process_api(settings, stack) as (_, http):
            yield http, proxy
