"""The order API is told which issuer to trust: the stack's development issuer, or Keycloak's
realm when the stack runs Keycloak."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.auth import AuthSettings
from stack import Stack, StackConfig

pytestmark = pytest.mark.unit


def _order_env(stack: Stack) -> dict[str, str]:
    return stack._plan("order", "order", None).env


def test_services_trust_the_development_issuer_by_default(tmp_path: Path) -> None:
    stack = Stack(StackConfig.for_tests(tmp_path))
    env = _order_env(stack)
    issuer = f"http://127.0.0.1:{stack.config.port_of('issuer')}"
    assert env["AUTH_ISSUER"] == issuer
    assert env["AUTH_JWKS_URL"] == f"{issuer}/jwks.json"
    assert env["AUTH_AUDIENCE"] == "order-api"
    # What the stack sets is what AuthSettings reads, and accepts.
    settings = AuthSettings(
        issuer=env["AUTH_ISSUER"], audience=env["AUTH_AUDIENCE"], jwks_url=env["AUTH_JWKS_URL"]
    )
    assert settings.effective_jwks_url == env["AUTH_JWKS_URL"]
    launch = stack._plan("issuer", "issuer", None)
    assert launch.argv[launch.argv.index("--issuer") + 1] == issuer
    assert launch.argv[launch.argv.index("--key") + 1] == str(stack.config.issuer_key_path)


def test_services_trust_keycloaks_realm_when_the_stack_runs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = Stack(StackConfig.for_tests(tmp_path))
    monkeypatch.setattr(Stack, "is_running", lambda self, name: name == "keycloak")
    env = _order_env(stack)
    realm = f"http://127.0.0.1:{stack.config.port_of('keycloak')}/realms/outbox"
    assert env["AUTH_ISSUER"] == realm
    assert env["AUTH_JWKS_URL"] == f"{realm}/protocol/openid-connect/certs"
