"""UserTokens: the load generators' bearer tokens, one per user, minted once and kept until
near their end, each one the order API's validator accepts as that user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest

from shared.auth.settings import ORDER_API_AUDIENCE
from stack.config import StackConfig
from stack.issuer import ALGORITHM, UserTokens, bearer_header, load_or_create_key, token_subject


@pytest.fixture
def config(tmp_path: Path) -> StackConfig:
    return StackConfig.for_tests(tmp_path)


def _claims(token: str, config: StackConfig) -> dict[str, Any]:
    key = load_or_create_key(config.issuer_key_path).public_key()
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=[ALGORITHM], audience=ORDER_API_AUDIENCE, issuer=config.issuer_url
    )
    return claims


def test_a_users_token_names_the_user_and_verifies_with_the_stacks_issuer_key(
    config: StackConfig,
) -> None:
    tokens = UserTokens.for_stack(config, ttl_seconds=600)
    claims = _claims(tokens.token("bench-user-7"), config)
    assert claims["sub"] == "bench-user-7"
    assert claims["exp"] == claims["iat"] + 600
    assert tokens.headers("bench-user-7") == bearer_header(tokens.token("bench-user-7"))
    assert bearer_header("abc") == {"Authorization": "Bearer abc"}


def test_a_token_is_minted_once_and_then_only_looked_up(config: StackConfig) -> None:
    tokens = UserTokens.for_stack(config)
    tokens.mint(["alice", "bob"])
    alice = tokens.token("alice")
    # Every token has its own jti: the same string means no second signature.
    assert tokens.token("alice") is alice
    assert tokens.token("bob") != alice


def test_a_token_near_its_end_is_minted_again(
    config: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = UserTokens.for_stack(config, ttl_seconds=600)
    first = tokens.token("alice")
    issued = float(_claims(first, config)["iat"])
    still_fresh = issued + 600 - UserTokens.REMINT_MARGIN_SECONDS - 5
    monkeypatch.setattr("stack.issuer.time.time", lambda: still_fresh)
    assert tokens.token("alice") is first
    monkeypatch.setattr("stack.issuer.time.time", lambda: still_fresh + 10)
    again = tokens.token("alice")
    assert again != first
    assert token_subject(again) == "alice"


def test_a_lifetime_within_the_remint_margin_is_refused(config: StackConfig) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        UserTokens.for_stack(config, ttl_seconds=UserTokens.REMINT_MARGIN_SECONDS)
