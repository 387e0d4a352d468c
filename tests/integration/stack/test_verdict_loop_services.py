"""The embedded stack runs the two services that close the verdict loop: inventory's outbox
relay (the relay program on the ``inventory`` database, on its own port, beside the order
outbox's relay) and the order service's consumer of inventory's verdicts."""

from __future__ import annotations

import json
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from services.relay.lease import LEASE_COLLECTION
from stack import Stack
from tests.waiting import wait_until


def _log_lines(stack: Stack, instance: str) -> list[dict[str, Any]]:
    text = stack.logs_path(instance).read_text("utf-8", "replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_the_inventory_relay_holds_the_slots_of_the_inventory_outbox(stack: Stack) -> None:
    stack.start("inventory-relay")
    try:
        port = stack.port_of("inventory-relay")
        assert port == stack.config.port_of("inventory-relay") != stack.config.port_of("relay")
        async with httpx.AsyncClient(timeout=5) as http:
            ready = await http.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200, ready.text
        [started] = [
            line for line in _log_lines(stack, "inventory-relay") if line["msg"] == "relay started"
        ][-1:]
        assert started["database"] == "inventory"

        # Its slot leases are in the inventory database, next to the outbox they fence (the
        # owner is the instance id, host:pid:suffix).
        pid = stack.pids()["inventory-relay"]
        client: AsyncMongoClient[Any] = AsyncMongoClient(stack.config.mongo_uri, timeoutMS=10_000)
        try:
            leases = client["inventory"][LEASE_COLLECTION]

            async def owned() -> int:
                return await leases.count_documents({"owner": {"$regex": f":{pid}:"}})

            assert await wait_until(owned, timeout=30, message="inventory's slot leases") > 0
        finally:
            await client.close()
    finally:
        stack.stop("inventory-relay")
    assert not stack.is_running("inventory-relay")


def test_the_order_verdicts_consumer_starts_on_its_own_port(stack: Stack) -> None:
    stack.start("order-verdicts")  # returns once its /readyz answers 200
    try:
        assert stack.port_of("order-verdicts") == stack.config.port_of("order-verdicts")
        assert stack.status()["order-verdicts"]["running"]
    finally:
        stack.stop("order-verdicts")
    assert not stack.is_running("order-verdicts")
