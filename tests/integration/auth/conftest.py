"""Keycloak tests run only where Keycloak is at hand: its distribution already resolved
(``.stack/keycloak``, e.g. after ``python -m stack up --with keycloak``) or
``STACK_WITH_KEYCLOAK=1`` (which resolves it: 177 MB from Maven Central, once). Elsewhere they
are deselected, so they show as deselected in the summary, never as passed or skipped."""

from __future__ import annotations

import os

import pytest

from stack import keycloak
from stack.config import REPO_ROOT


def keycloak_wanted() -> bool:
    return os.environ.get("STACK_WITH_KEYCLOAK") == "1" or keycloak.installed(REPO_ROOT / ".stack")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if keycloak_wanted():
        return
    deselected = [item for item in items if item.get_closest_marker("keycloak")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("keycloak")]
