"""Keycloak tests run only where Keycloak is at hand: its distribution already resolved
(``.stack/keycloak``, e.g. after ``python -m stack up --with keycloak``) or
``STACK_WITH_KEYCLOAK=1`` (which resolves it: 177 MB from Maven Central, once);
``STACK_WITH_KEYCLOAK=0`` leaves them out even then. Deselected tests show as deselected in the
summary, never as passed or skipped."""

from __future__ import annotations

import os

import pytest

from stack import keycloak
from stack.config import REPO_ROOT


def keycloak_wanted() -> bool:
    """``STACK_WITH_KEYCLOAK=1``: yes (resolving it if needed); ``=0``: no, even if resolved;
    unset: when ``.stack/keycloak`` is resolved."""
    choice = os.environ.get("STACK_WITH_KEYCLOAK")
    if choice in ("0", "1"):
        return choice == "1"
    return keycloak.installed(REPO_ROOT / ".stack")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if keycloak_wanted():
        return
    deselected = [item for item in items if item.get_closest_marker("keycloak")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("keycloak")]
