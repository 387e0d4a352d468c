"""``python -m stack token``: bearer tokens from the running stack's development issuer, which
the order API's validator (shared.auth) accepts with the JWKS that issuer serves."""

from __future__ import annotations

import stat

import jwt
import pytest

from shared.auth import SUPPORT_ROLE, AuthSettings, TokenValidator
from stack import Stack
from tests.stacks import stack_cli

pytestmark = pytest.mark.integration


def _validator(stack: Stack) -> TokenValidator:
    """A validator configured as the stack configures the order API (AUTH_* variables)."""
    env = stack.config.auth_env()
    settings = AuthSettings(
        issuer=env["AUTH_ISSUER"], audience=env["AUTH_AUDIENCE"], jwks_url=env["AUTH_JWKS_URL"]
    )
    return TokenValidator(settings)


async def test_stack_token_prints_one_token_per_user_that_the_validator_accepts(
    stack: Stack,
) -> None:
    result = stack_cli(stack.config, "token", "alice", "bob")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    validator = _validator(stack)
    try:
        alice, bob = [await validator.validate(line) for line in lines]
    finally:
        await validator.aclose()
    assert (alice.subject, bob.subject) == ("alice", "bob")
    assert alice.issuer == stack.config.issuer_url
    claims = jwt.decode(lines[0], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600  # an hour by default
    # The signing key stays readable by its owner only.
    assert stat.S_IMODE(stack.config.issuer_key_path.stat().st_mode) == 0o600


async def test_stack_token_ttl_sets_the_lifetime(stack: Stack) -> None:
    result = stack_cli(stack.config, "token", "--ttl", "120", "alice")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


async def test_stack_token_role_gives_support_staff_their_role(stack: Stack) -> None:
    result = stack_cli(stack.config, "token", "--role", SUPPORT_ROLE, "carol")
    assert result.returncode == 0, result.stderr
    validator = _validator(stack)
    try:
        carol = await validator.validate(result.stdout.strip())
    finally:
        await validator.aclose()
    assert carol.roles == frozenset({SUPPORT_ROLE})
    assert carol.has_scope_or_role(SUPPORT_ROLE)


@pytest.mark.parametrize(
    ("args", "named"),
    [(("--ttl", "0", "alice"), "--ttl"), (("--ttl", "1h", "alice"), "--ttl"), (("a b",), "USER")],
)
def test_stack_token_names_a_bad_argument(stack: Stack, args: tuple[str, ...], named: str) -> None:
    result = stack_cli(stack.config, "token", *args)
    assert result.returncode == 2
    assert named in result.stderr
    assert result.stdout == ""


def test_stack_token_without_a_running_issuer_says_how_to_start_one(stack: Stack) -> None:
    stack.stop("issuer")
    try:
        result = stack_cli(stack.config, "token", "alice")
    finally:
        stack.start("issuer")
    assert result.returncode == 1
    assert "python -m stack up" in result.stderr
    assert result.stdout == ""
