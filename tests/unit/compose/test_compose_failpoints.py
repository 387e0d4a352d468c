"""Compose runs the services as a deployment would: failpoints and test commands stay off."""

from __future__ import annotations

from typing import Any


def test_compose_never_enables_failpoints_or_test_commands(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        env = service.get("environment") or {}
        assert not [key for key in env if "FAILPOINT" in key.upper()], name
        assert " ".join(service.get("command") or []).find("enableTestCommands") < 0, name
