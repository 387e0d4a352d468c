"""Tokens from a real Keycloak (the embedded stack's ``keycloak`` component, realm imported from
stack/keycloak/realm-outbox.json) pass the order API's validator as their user, and only theirs;
with them, the order API (started after Keycloak, so it trusts Keycloak's realm) lets a user
create, read and cancel her order, and answers another user as it answers an unknown id.

Slow (Keycloak starts in 30-140 s): marked ``keycloak`` and deselected unless Keycloak is at hand
(see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
from bson import ObjectId

from shared.auth import AuthSettings, InvalidToken, TokenValidator
from shared.contracts import EVENT_ORDER_CANCELLED, EVENT_ORDER_CREATED
from stack import Stack, keycloak
from stack.config import REPO_ROOT
from stack.issuer import bearer_header
from tests.integration.auth.order_api import running_order_api
from tests.stacks import stack_cli

pytestmark = [pytest.mark.integration, pytest.mark.keycloak]


def _user_ids() -> dict[str, str]:
    realm = json.loads(keycloak.REALM_FILE.read_text())
    return {user["username"]: user["id"] for user in realm["users"]}


@pytest.fixture(scope="module")
def keycloak_stack(stack: Stack) -> Iterator[Stack]:
    keycloak.resolve(REPO_ROOT / ".stack")
    stack.start("keycloak")
    try:
        yield stack
    finally:
        stack.stop("keycloak")


def _validator(stack: Stack) -> TokenValidator:
    env = stack.config.auth_env(keycloak=True)
    return TokenValidator(
        AuthSettings(
            issuer=env["AUTH_ISSUER"], audience=env["AUTH_AUDIENCE"], jwks_url=env["AUTH_JWKS_URL"]
        )
    )


async def test_a_keycloak_token_by_the_password_grant_is_accepted_as_its_user(
    keycloak_stack: Stack,
) -> None:
    issuer = keycloak_stack.config.keycloak_issuer
    alice, bob = await asyncio.gather(
        asyncio.to_thread(keycloak.password_grant, issuer, "alice"),
        asyncio.to_thread(keycloak.password_grant, issuer, "bob"),
    )
    validator = _validator(keycloak_stack)
    try:
        principals = [await validator.validate(token) for token in (alice, bob)]
    finally:
        await validator.aclose()
    ids = _user_ids()
    assert [p.subject for p in principals] == [ids["alice"], ids["bob"]]
    assert [p.username for p in principals] == ["alice", "bob"]
    assert principals[0].issuer == issuer


async def test_a_keycloak_token_with_a_tampered_subject_is_refused(keycloak_stack: Stack) -> None:
    token = await asyncio.to_thread(
        keycloak.password_grant, keycloak_stack.config.keycloak_issuer, "bob"
    )
    header, _, signature = token.split(".")
    _, other_payload, _ = (
        await asyncio.to_thread(
            keycloak.password_grant, keycloak_stack.config.keycloak_issuer, "alice"
        )
    ).split(".")
    validator = _validator(keycloak_stack)
    try:
        with pytest.raises(InvalidToken, match="signature"):
            await validator.validate(f"{header}.{other_payload}.{signature}")
    finally:
        await validator.aclose()


async def test_stack_token_asks_keycloak_when_the_stack_runs_it(keycloak_stack: Stack) -> None:
    config = keycloak_stack.config
    result = await asyncio.to_thread(stack_cli, config, "token", "alice")
    assert result.returncode == 0, result.stderr
    validator = _validator(keycloak_stack)
    try:
        principal = await validator.validate(result.stdout.strip())
    finally:
        await validator.aclose()
    assert principal.subject == _user_ids()["alice"]
    # Keycloak's realm decides the lifetime; asking for another is an error, not ignored.
    refused = await asyncio.to_thread(stack_cli, config, "token", "--ttl", "60", "alice")
    assert refused.returncode == 2
    assert "accessTokenLifespan" in refused.stderr
    roles = await asyncio.to_thread(stack_cli, config, "token", "--role", "x", "alice")
    assert roles.returncode == 2
    assert "--role" in roles.stderr
    unknown = await asyncio.to_thread(stack_cli, config, "token", "mallory")
    assert unknown.returncode == 1
    assert "not a demo user" in unknown.stderr


@pytest_asyncio.fixture(loop_scope="session")
async def order_api(keycloak_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The order API as a stack process, started while Keycloak runs: the supervisor gives it
    Keycloak's AUTH_* (stack/config.py auth_env), so Keycloak's tokens are the ones it takes."""
    async with running_order_api(keycloak_stack, "auth_keycloak") as http:
        yield http


def _as_if_for(response: httpx.Response, unknown_id: str, order_id: str) -> object:
    """The body ``response`` (an answer about ``unknown_id``) would have had for ``order_id``."""
    return json.loads(response.text.replace(unknown_id, order_id))


async def test_alice_creates_reads_and_cancels_her_order_and_bob_sees_no_such_order(
    keycloak_stack: Stack, order_api: httpx.AsyncClient
) -> None:
    issuer = keycloak_stack.config.keycloak_issuer
    alice_token, bob_token = await asyncio.gather(
        asyncio.to_thread(keycloak.password_grant, issuer, "alice"),
        asyncio.to_thread(keycloak.password_grant, issuer, "bob"),
    )
    alice, bob = bearer_header(alice_token), bearer_header(bob_token)
    # No userId in the body: the order is the token's subject's.
    body = {
        "customerEmail": "alice@example.com",
        "items": [{"sku": "SKU-KEYCLOAK", "quantity": 1, "unitPrice": "9.90"}],
    }
    created = await order_api.post("/orders", json=body, headers=alice)
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    assert created.json()["userId"] == _user_ids()["alice"]

    read = await order_api.get(f"/orders/{order_id}", headers=alice)
    assert read.status_code == 200, read.text
    assert (read.json()["id"], read.json()["status"]) == (order_id, "placed")

    # Bob is told what an unknown id would tell him, word for word: no oracle for ids.
    unknown_id = str(ObjectId())
    unknown_read = await order_api.get(f"/orders/{unknown_id}", headers=bob)
    bobs_read = await order_api.get(f"/orders/{order_id}", headers=bob)
    assert unknown_read.status_code == bobs_read.status_code == 404, bobs_read.text
    assert bobs_read.json() == _as_if_for(unknown_read, unknown_id, order_id)
    unknown_cancel = await order_api.post(f"/orders/{unknown_id}/cancel", headers=bob)
    bobs_cancel = await order_api.post(f"/orders/{order_id}/cancel", headers=bob)
    assert unknown_cancel.status_code == bobs_cancel.status_code == 404, bobs_cancel.text
    assert bobs_cancel.json() == _as_if_for(unknown_cancel, unknown_id, order_id)

    cancelled = await order_api.post(f"/orders/{order_id}/cancel", headers=alice)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    # Bob's attempt changed nothing, alice's did: her order reads cancelled, once.
    after = await order_api.get(f"/orders/{order_id}", headers=alice)
    assert after.json()["status"] == "cancelled"
    events = [e["eventType"] for e in after.json()["events"]]
    assert events == [EVENT_ORDER_CREATED, EVENT_ORDER_CANCELLED]
