"""The Idempotency-Key lookups of POST /orders and of a cancel are served by their unique indexes.

A retried create looks its first order up by key; a keyed cancel looks for another order it
already cancelled. A lookup that scans the orders collection makes the API slower with every
order it ever took (the bench saw the API fall from 54 to 10 orders/s over three 10-second runs,
when every keyed create looked its key up first). The indexes are partial (only documents with a
key), and not every server's planner picks a partial index for an equality query on its own, so
the handlers name the index; this test asks the server how it runs the commands the API really
sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pymongo import monitoring

from tests.integration.order.conftest import Api, order_body


class _OrdersFinds(monitoring.CommandListener):
    """The ``find`` commands sent to the orders collection while active."""

    def __init__(self) -> None:
        self.active = True
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.active and event.command_name == "find" and event.command["find"] == "orders":
            self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def orders_finds() -> Iterator[_OrdersFinds]:
    # Registered globally, before the `api` fixture builds the app and its client: PyMongo has no
    # way to unregister, so the listener goes quiet when the test ends.
    listener = _OrdersFinds()
    monitoring.register(listener)
    try:
        yield listener
    finally:
        listener.active = False


@pytest.fixture
async def api_with_history(orders_finds: _OrdersFinds, api: Api) -> AsyncIterator[Api]:
    # Enough orders of the same user that a scan and an index lookup differ in what they read.
    for n in range(40):
        response = await api.http.post(
            "/orders", json=order_body(), headers={"Idempotency-Key": f"history-{n}"}
        )
        assert response.status_code == 201
    orders_finds.commands.clear()
    yield api


async def _plan_stages(api: Api, command: dict[str, Any]) -> tuple[set[str], int]:
    explain_of = {
        key: command[key] for key in ("find", "filter", "hint", "sort", "limit") if key in command
    }
    explained = await api.db.command("explain", explain_of, verbosity="executionStats")
    stages: set[str] = set()

    def walk(stage: dict[str, Any]) -> None:
        stages.add(stage["stage"])
        for child in ("inputStage",):
            if child in stage:
                walk(stage[child])
        for child in stage.get("inputStages", []):
            walk(child)

    walk(explained["queryPlanner"]["winningPlan"])
    return stages, explained["executionStats"]["totalDocsExamined"]


async def test_the_create_key_lookup_reads_the_index_not_the_collection(
    orders_finds: _OrdersFinds, api_with_history: Api
) -> None:
    api = api_with_history
    first = await api.http.post("/orders", json=order_body(), headers={"Idempotency-Key": "k"})
    retry = await api.http.post("/orders", json=order_body(), headers={"Idempotency-Key": "k"})
    assert (first.status_code, retry.status_code) == (201, 200)

    assert orders_finds.commands, "the retry looked up the order its key made"
    for command in orders_finds.commands:
        stages, docs_examined = await _plan_stages(api, command)
        assert "IXSCAN" in stages and "COLLSCAN" not in stages, (command, stages)
        assert docs_examined <= 1, command


async def test_the_cancel_key_lookup_reads_the_index_not_the_collection(
    orders_finds: _OrdersFinds, api_with_history: Api
) -> None:
    api = api_with_history
    created = await api.http.post("/orders", json=order_body())
    assert created.status_code == 201
    orders_finds.commands.clear()

    cancelled = await api.http.post(
        f"/orders/{created.json()['id']}/cancel", headers={"Idempotency-Key": "cancel-key"}
    )
    assert cancelled.status_code in (200, 202), cancelled.text

    key_lookups = [c for c in orders_finds.commands if "cancelIdempotencyKey" in str(c["filter"])]
    assert key_lookups, "the cancel looked its key up"
    for command in key_lookups:
        stages, docs_examined = await _plan_stages(api, command)
        assert "IXSCAN" in stages and "COLLSCAN" not in stages, (command, stages)
        assert docs_examined <= 1, command
