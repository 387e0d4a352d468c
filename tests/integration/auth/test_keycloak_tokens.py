"""Tokens from a real Keycloak (the embedded stack's ``keycloak`` component, realm imported from
stack/keycloak/realm-outbox.json) pass the order API's validator as their user, and only theirs.

Slow (Keycloak starts in 30-140 s): marked ``keycloak`` and deselected unless Keycloak is at hand
(see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from shared.auth import AuthSettings, InvalidToken, TokenValidator
from stack import Stack, keycloak
from stack.config import REPO_ROOT
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
