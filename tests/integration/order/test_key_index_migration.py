"""A deployment with the old global Idempotency-Key index gets the per-user one at start-up."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from pymongo import ASCENDING, IndexModel

from services.order.app import create_app
from services.order.settings import OrderSettings
from shared.mongo import MongoClient
from stack import Stack
from tests.integration.order.conftest import TEST_DATABASE, auth_settings, bearer, order_body

# What the order API created before keys were scoped to the caller (kept here verbatim: the
# migration must recognise exactly this).
OLD_INDEX = IndexModel(
    [("idempotencyKey", ASCENDING)],
    name="idempotencyKey_unique",
    unique=True,
    partialFilterExpression={"idempotencyKey": {"$type": "string"}},
)


async def _post(stack: Stack, settings: OrderSettings, user: str, key: str) -> httpx.Response:
    app = create_app(settings, auth_settings(stack))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://order.test") as http:
            return await http.post(
                "/orders",
                json=order_body(userId=user),
                headers={"Idempotency-Key": key, **bearer(stack, user)},
            )


async def _key_indexes(mongo: MongoClient) -> dict[str, dict[str, Any]]:
    indexes = await mongo[TEST_DATABASE].orders.index_information()
    return {
        name: info
        for name, info in indexes.items()
        if any(field == "idempotencyKey" for field, _ in info["key"])
    }


async def test_old_global_key_index_is_replaced_by_the_per_user_one_at_start_up(
    stack: Stack, mongo: MongoClient, caplog: pytest.LogCaptureFixture
) -> None:
    settings = OrderSettings(mongo_uri=stack.config.mongo_uri, database=TEST_DATABASE)
    await mongo.drop_database(TEST_DATABASE)
    # An order made under the old scheme, then the old index in place of the new one.
    made_before = await _post(stack, settings, "alice", "checkout-1")
    assert made_before.status_code == 201, made_before.text
    for name in await _key_indexes(mongo):
        await mongo[TEST_DATABASE].orders.drop_index(name)
    await mongo[TEST_DATABASE].orders.create_indexes([OLD_INDEX])

    with caplog.at_level(logging.WARNING):
        bob = await _post(stack, settings, "bob", "checkout-1")
        alice_again = await _post(stack, settings, "alice", "checkout-1")

    assert bob.status_code == 201, bob.text
    assert alice_again.status_code == 200, alice_again.text
    assert alice_again.json()["id"] == made_before.json()["id"]
    indexes = await _key_indexes(mongo)
    assert list(indexes) == ["userId_1_idempotencyKey_1_unique"], indexes
    new = indexes["userId_1_idempotencyKey_1_unique"]
    assert new["key"] == [("userId", 1), ("idempotencyKey", 1)]
    assert new["unique"] is True
    assert any("idempotencyKey_unique" in record.getMessage() for record in caplog.records), [
        record.getMessage() for record in caplog.records
    ]


async def test_global_index_recreated_by_an_old_instance_answers_409_not_500(
    stack: Stack, mongo: MongoClient
) -> None:
    # Mid-rollout: an instance of the old version restarts and builds the global index again
    # while this one runs. Another user's reuse of a key is then refused by that index; the
    # answer is the old behaviour (409, naming no order), never a 500.
    settings = OrderSettings(mongo_uri=stack.config.mongo_uri, database=TEST_DATABASE)
    await mongo.drop_database(TEST_DATABASE)
    app = create_app(settings, auth_settings(stack))
    async with app.router.lifespan_context(app):
        await mongo[TEST_DATABASE].orders.create_indexes([OLD_INDEX])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://order.test") as http:
            key = {"Idempotency-Key": "checkout-1"}
            alice = await http.post(
                "/orders",
                json=order_body(userId="alice"),
                headers={**key, **bearer(stack, "alice")},
            )
            bob = await http.post(
                "/orders", json=order_body(userId="bob"), headers={**key, **bearer(stack, "bob")}
            )

    assert alice.status_code == 201, alice.text
    assert bob.status_code == 409, bob.text
    assert bob.json()["error"] == "idempotency_key_reused"
    assert alice.json()["id"] not in bob.text
