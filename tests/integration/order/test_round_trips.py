"""What one order costs MongoDB in round trips: the API's per-request work (issue 13)."""

from __future__ import annotations

from tests.integration.order.conftest import Api, order_body
from tests.mongo_commands import CommandLog


async def test_an_order_with_an_idempotency_key_costs_two_inserts_and_the_commit(
    api: Api, commands: CommandLog
) -> None:
    commands.clear()
    created = await api.http.post(
        "/orders", json=order_body(), headers={"Idempotency-Key": "first-try"}
    )
    assert created.status_code == 201
    # No look-up of the key before the transaction: the unique (userId, idempotencyKey) index
    # refuses a reused key inside it, so a read first would only cost a round trip.
    assert commands.names == ["insert", "insert", "commitTransaction"]


async def test_an_order_without_a_key_costs_the_same_two_inserts_and_the_commit(
    api: Api, commands: CommandLog
) -> None:
    commands.clear()
    assert (await api.http.post("/orders", json=order_body())).status_code == 201
    assert commands.names == ["insert", "insert", "commitTransaction"]


async def test_a_retry_found_by_the_index_still_replays_the_first_order_and_writes_nothing(
    api: Api, commands: CommandLog
) -> None:
    headers = {"Idempotency-Key": "retried"}
    first = await api.http.post("/orders", json=order_body(), headers=headers)
    commands.clear()
    again = await api.http.post("/orders", json=order_body(), headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    # The retry's insert collided inside the transaction; the first order was read after it.
    assert commands.names[0] == "insert"
    assert commands.names[-1] == "find"
    assert "commitTransaction" not in commands.names
    assert await api.counts() == (1, 1)
