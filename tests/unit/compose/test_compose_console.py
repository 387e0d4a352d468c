"""The operator console in docker compose: its token comes from the operator's environment (never
from the file), it is published on 127.0.0.1 only, it listens where its healthcheck probes, and
it finds every service it reports on by its compose name and settings port."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.console.settings import ConsoleSettings
from shared.settings import describe_settings_error
from tests.unit.compose.compose_helpers import (
    COMPOSE_FILE,
    OPERATOR_TOKEN,
    PythonService,
    accepted_env_names,
    load_model,
    python_services,
    settings_class_of,
)


def _service(model: dict[str, Any], name: str) -> PythonService:
    return next(s for s in python_services(model) if s.name == name)


def _settings(service: PythonService, monkeypatch: pytest.MonkeyPatch, settings_class: Any) -> Any:
    """The service's settings as its container builds them: from the compose env only."""
    with monkeypatch.context() as patch:
        for name in accepted_env_names(settings_class):
            patch.delenv(name, raising=False)
        for name, value in service.environment.items():
            patch.setenv(name, value)
        return settings_class()


def test_the_console_token_is_the_operators_and_no_other_service_gets_it(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    console = _service(compose, "console")
    settings = _settings(console, monkeypatch, ConsoleSettings)
    assert settings.token.get_secret_value() == OPERATOR_TOKEN
    others = [s.name for s in python_services(compose) if "CONSOLE_TOKEN" in s.environment]
    assert others == ["console"]


def test_without_a_token_in_the_environment_the_console_refuses_to_start_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The rest of the project still loads: `docker compose up demo` needs no token.
    model = load_model(COMPOSE_FILE, env={})
    console = _service(model, "console")
    assert console.environment["CONSOLE_TOKEN"] == ""
    with pytest.raises(ValidationError) as refused:
        _settings(console, monkeypatch, ConsoleSettings)
    assert "CONSOLE_TOKEN" in describe_settings_error(ConsoleSettings, refused.value)


def test_the_console_listens_where_its_healthcheck_probes_and_is_published_on_loopback(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    console = _service(compose, "console")
    settings = _settings(console, monkeypatch, ConsoleSettings)
    assert settings.host == "0.0.0.0"  # inside the container; the host sees 127.0.0.1 only
    assert console.spec["healthcheck"]["test"][-1] == f"http://127.0.0.1:{settings.port}/readyz"
    [port] = console.spec["ports"]
    assert (port["host_ip"], int(port["target"])) == ("127.0.0.1", settings.port)


def test_the_console_reaches_each_service_by_its_compose_name_and_settings_port(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    console = _settings(_service(compose, "console"), monkeypatch, ConsoleSettings)
    ports = {}
    for name in ("order", "relay", "inventory", "email", "inventory-relay", "order-verdicts"):
        service = _service(compose, name)
        ports[name] = _settings(service, monkeypatch, settings_class_of(service.module)).port
    assert console.order_url == f"http://order:{ports['order']}"
    assert console.relay_urls == (f"http://relay:{ports['relay']}",)
    assert console.inventory_url == f"http://inventory:{ports['inventory']}"
    assert console.email_url == f"http://email:{ports['email']}"
    assert console.inventory_relay_urls == (f"http://inventory-relay:{ports['inventory-relay']}",)
    assert console.order_verdicts_url == f"http://order-verdicts:{ports['order-verdicts']}"
    assert console.mailpit_url == "http://mailpit:8025"
    jaeger_ui = next(p for p in compose["services"]["jaeger"]["ports"])
    assert console.jaeger_url == f"http://127.0.0.1:{jaeger_ui['published']}"
