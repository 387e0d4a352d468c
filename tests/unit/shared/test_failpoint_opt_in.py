"""Failpoints (test-only crash points) need an explicit opt-in that only the test suite gives.

``ENVIRONMENT`` is not that opt-in: its default and compose's value are ``local``, so a stray
``RELAY_FAILPOINT`` in a developer's shell or a deployment would make a service exit mid-batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.email.settings import EmailSettings
from services.inventory.settings import InventorySettings
from services.relay.settings import FAILPOINT_AFTER_KAFKA_ACK, RelaySettings
from shared.consumer import FAILPOINT_AFTER_SIDE_EFFECT
from shared.settings import ServiceSettings
from stack import demo
from stack.config import StackConfig

SETTINGS: list[tuple[type[ServiceSettings], str]] = [
    (RelaySettings, FAILPOINT_AFTER_KAFKA_ACK),
    (InventorySettings, FAILPOINT_AFTER_SIDE_EFFECT),
    (EmailSettings, FAILPOINT_AFTER_SIDE_EFFECT),
]


@pytest.mark.parametrize(("settings", "failpoint"), SETTINGS)
@pytest.mark.parametrize("environment", ["local", "test"])
def test_a_failpoint_without_the_opt_in_is_refused_in_every_environment(
    settings: type[ServiceSettings], failpoint: str, environment: str
) -> None:
    with pytest.raises(ValidationError, match="ENABLE_FAILPOINTS"):
        settings(failpoint=failpoint, environment=environment)


@pytest.mark.parametrize(("settings", "failpoint"), SETTINGS)
def test_a_failpoint_with_the_opt_in_is_armed(
    settings: type[ServiceSettings], failpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_FAILPOINTS", "true")
    assert settings(failpoint=failpoint).failpoint == failpoint


def test_the_opt_in_itself_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="ENABLE_FAILPOINTS"):
        RelaySettings(enable_failpoints=True, environment="production")


def test_failpoints_are_off_by_default() -> None:
    assert RelaySettings().enable_failpoints is False


def test_only_the_test_stack_turns_failpoints_on(tmp_path: Path) -> None:
    assert StackConfig.for_tests(tmp_path).service_env().get("ENABLE_FAILPOINTS") == "true"
    # `make up` and `python -m stack` use the default configuration.
    assert "ENABLE_FAILPOINTS" not in StackConfig.default().service_env()
    assert not StackConfig.default().enable_test_commands


def test_the_demo_turns_failpoints_and_test_commands_off(tmp_path: Path) -> None:
    config = demo.demo_stack_config(tmp_path)
    assert "ENABLE_FAILPOINTS" not in config.service_env()
    assert not config.enable_test_commands
    assert config.environment == "local"
