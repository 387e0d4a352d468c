"""Compose's Keycloak is the release and the realm the embedded stack runs, and the issuer it
names in tokens is the address the host reaches it at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stack import keycloak
from stack.versions import KEYCLOAK_VERSION

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
