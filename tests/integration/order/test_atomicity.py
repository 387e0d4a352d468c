"""The order and its outbox event are written atomically: both or neither.

``failCommand`` is armed only for the API's own connections (``appName``), so the failpoint
cannot hit another client of the shared test server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.order.app import APP_NAME
from shared.mongo import MongoClient
from tests.integration.order.conftest import Api, order_body


@pytest.fixture
async def fail_commit(mongo: MongoClient) -> AsyncIterator[Any]:
    async def arm(**data: Any) -> None:
        await mongo.admin.command(
            {
                "configureFailPoint": "failCommand",
                "mode": {"times": 1},
                "data": {"failCommands": ["commitTransaction"], "appName": APP_NAME, **data},
            }
        )

    try:
        yield arm
    finally:
        await mongo.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


async def test_order_and_outbox_are_written_atomically(api: Api, fail_commit: Any) -> None:
    # A non-transient commit failure: the transaction must not be half-applied.
    await fail_commit(errorCode=8)

    response = await api.http.post("/orders", json=order_body())

    assert response.status_code == 500, response.text
    assert response.json()["error"] == "database_error"
    assert await api.counts() == (0, 0)
    # The API is not wedged: the next request goes through.
    assert (await api.http.post("/orders", json=order_body())).status_code == 201
    assert await api.counts() == (1, 1)


async def test_transient_commit_error_retries_the_whole_transaction_once(
    api: Api, fail_commit: Any
) -> None:
    await fail_commit(errorCode=112, errorLabels=["TransientTransactionError"])

    response = await api.http.post("/orders", json=order_body())

    assert response.status_code == 201, response.text
    assert await api.counts() == (1, 1)
    event = await api.outbox.find_one({})
    assert event is not None
    assert event["aggregateId"] == response.json()["id"]
    metrics = (await api.http.get("/metrics")).text
    assert "order_transaction_retries_total 1.0" in metrics
    assert "orders_created_total 1.0" in metrics
