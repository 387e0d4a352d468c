"""The README's flow on the default stack, no Keycloak: ``TOKEN=$(python -m stack token alice)``,
then ``curl -H "Authorization: Bearer $TOKEN"`` creates, reads and cancels alice's order, and
bob's token (the same command's second line) reads it as an unknown order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from stack import Stack
from stack.issuer import bearer_header
from tests.integration.auth.order_api import running_order_api
from tests.stacks import stack_cli

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def order_api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The order API as ``make up`` runs it: a stack process trusting the stack's own issuer."""
    async with running_order_api(stack, "auth_token_flow") as http:
        yield http


async def test_tokens_printed_by_stack_token_create_read_and_cancel_their_users_orders(
    stack: Stack, order_api: httpx.AsyncClient
) -> None:
    printed = await asyncio.to_thread(stack_cli, stack.config, "token", "alice", "bob")
    assert printed.returncode == 0, printed.stderr
    alice_token, bob_token = printed.stdout.split()
    alice, bob = bearer_header(alice_token), bearer_header(bob_token)
    body = {
        "customerEmail": "alice@example.com",
        "items": [{"sku": "SKU-1", "quantity": 2, "unitPrice": "12.50"}],
    }

    created = await order_api.post("/orders", json=body, headers=alice)
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["userId"] == "alice"  # the token's subject: the name given to `stack token`
    read = await order_api.get(f"/orders/{order['id']}", headers=alice)
    assert read.status_code == 200, read.text
    assert read.json()["id"] == order["id"]

    assert (await order_api.get(f"/orders/{order['id']}", headers=bob)).status_code == 404
    assert (await order_api.get(f"/orders/{order['id']}")).status_code == 401

    cancelled = await order_api.post(f"/orders/{order['id']}/cancel", headers=alice)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
