"""Compose's Keycloak is the release and the realm the embedded stack runs, the issuer it
names in tokens is the address the host reaches it at, and the order API and the demo use it:
the API accepts exactly that issuer and the realm's audience and reads the keys over the compose
network; the demo takes its customers' tokens there."""

from __future__ import annotations

import json
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from shared.auth import AuthSettings
from stack import keycloak
from stack.versions import KEYCLOAK_VERSION
from tests.unit.compose.compose_helpers import REPO, accepted_env_names

Services = dict[str, dict[str, Any]]


def test_keycloak_is_the_release_the_embedded_stack_resolves(services: Services) -> None:
    assert services["keycloak"]["image"] == f"quay.io/keycloak/keycloak:{KEYCLOAK_VERSION}"
    assert f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip" == keycloak.ARTIFACT


def test_keycloak_imports_the_repository_realm_read_only(services: Services) -> None:
    spec = services["keycloak"]
    mounts = {v["target"]: v for v in spec["volumes"]}
    realm = mounts["/opt/keycloak/data/import/realm-outbox.json"]
    assert Path(realm["source"]) == keycloak.REALM_FILE
    assert realm["read_only"] is True
    assert spec["command"][:2] == ["start-dev", "--import-realm"]


def test_keycloak_names_the_issuer_the_host_reaches_it_at(services: Services) -> None:
    spec = services["keycloak"]
    published = {(p["host_ip"], p["published"]) for p in spec["ports"]}
    assert published == {("127.0.0.1", "8180")}
    assert "--hostname=http://127.0.0.1:8180" in spec["command"]
    # The API inside compose reads the keys at keycloak:8080, not at the host's address.
    assert "--hostname-backchannel-dynamic=true" in spec["command"]


def _hostname(services: Services) -> str:
    prefix = "--hostname="
    command: list[str] = services["keycloak"]["command"]
    return next(a[len(prefix) :] for a in command if a.startswith(prefix))


def _realm_in_network(services: Services) -> str:
    """The realm's URL from another container: the service name and its container port."""
    (port,) = {p["target"] for p in services["keycloak"]["ports"]}
    realm = json.loads(keycloak.REALM_FILE.read_text())["realm"]
    return f"http://keycloak:{port}/realms/{realm}"


def _realm_audience() -> str:
    """The audience the realm's token client puts in its access tokens (its audience mapper)."""
    realm = json.loads(keycloak.REALM_FILE.read_text())
    (client,) = [c for c in realm["clients"] if c["clientId"] == keycloak.CLI_CLIENT]
    (mapper,) = [
        m for m in client["protocolMappers"] if m["protocolMapper"].endswith("audience-mapper")
    ]
    audience: str = mapper["config"]["included.client.audience"]
    return audience


def test_the_order_api_accepts_the_tokens_of_the_compose_keycloak(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = services["order"]["environment"]
    # Built as the order container builds it: from its compose environment alone.
    for name in accepted_env_names(AuthSettings):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    auth = AuthSettings()
    realm = json.loads(keycloak.REALM_FILE.read_text())["realm"]
    # iss as Keycloak writes it (its --hostname, the host's address), whoever asked.
    assert auth.issuer == f"{_hostname(services)}/realms/{realm}"
    assert auth.audience == _realm_audience()
    # The keys over the compose network, not at the host's address (127.0.0.1 in a container
    # is the container itself).
    assert auth.effective_jwks_url == f"{_realm_in_network(services)}/protocol/openid-connect/certs"


def test_the_demo_takes_its_tokens_from_the_compose_keycloak_once_it_is_healthy(
    services: Services,
) -> None:
    command = services["demo"]["command"]
    url = command[command.index("--keycloak-url") + 1]
    assert url == _realm_in_network(services)
    assert services["demo"]["depends_on"]["keycloak"]["condition"] == "service_healthy"


def test_the_image_carries_the_realm_file_the_demo_reads_its_users_from() -> None:
    # The image installs the package (pip install ., not editable): a data file reaches it only
    # as package data of its own package.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]
    patterns = package_data.get("stack.keycloak", [])
    assert any(fnmatch(keycloak.REALM_FILE.name, p) for p in patterns), package_data
