"""The stack's services that are not simply ``python -m services.<name>``: the relay of inventory's
outbox runs the relay program configured for the ``inventory`` database, on a port of its own,
without moving the order outbox's relay."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.config import DEFAULT_PORTS, SERVICES, StackConfig, service_process
from stack.supervisor import Stack, component_of


@pytest.mark.parametrize(
    ("instance", "component"),
    [
        ("relay", "relay"),
        ("relay-2", "relay"),
        ("inventory", "inventory"),
        ("inventory-2", "inventory"),
        ("inventory-relay", "inventory-relay"),
        ("inventory-relay-2", "inventory-relay"),
        ("inventory-relay-crash-1a2b", "inventory-relay"),
    ],
)
def test_an_instance_belongs_to_the_longest_component_its_name_starts_with(
    instance: str, component: str
) -> None:
    assert component_of(instance) == component


def test_the_inventory_relay_runs_the_relay_program_on_the_inventory_outbox(
    tmp_path: Path,
) -> None:
    config = StackConfig.for_tests(tmp_path)
    launch = Stack(config)._plan("inventory-relay", "inventory-relay", None)

    assert launch.argv[-2:] == ["-m", "services.relay"]
    assert launch.env["RELAY_DATABASE"] == "inventory"
    assert launch.env["RELAY_TRANSACTIONAL_ID"] == "inventory-relay"
    assert launch.env["RELAY_PORT"] == str(config.port_of("inventory-relay"))
    assert config.port_of("inventory-relay") != config.port_of("relay")


def test_the_order_outbox_relay_keeps_its_port_and_outbox(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path)
    assert config.service_env()["RELAY_PORT"] == str(config.port_of("relay"))
    launch = Stack(config)._plan("relay", "relay", None)
    assert launch.env["RELAY_PORT"] == str(config.port_of("relay"))
    assert "RELAY_DATABASE" not in launch.env or launch.env["RELAY_DATABASE"] == "orders"


def test_the_order_verdicts_consumer_runs_its_module_on_its_own_port(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path)
    assert config.service_env()["ORDER_VERDICTS_PORT"] == str(config.port_of("order-verdicts"))
    launch = Stack(config)._plan("order-verdicts", "order-verdicts", None)
    assert launch.argv[-2:] == ["-m", "services.order.verdicts"]
    assert launch.env["ORDER_VERDICTS_PORT"] == str(config.port_of("order-verdicts"))
    assert launch.env["ORDER_PORT"] == str(config.port_of("order"))


def test_every_service_has_a_default_port_and_a_variable_to_read_it_from() -> None:
    assert DEFAULT_PORTS["inventory-relay"] == 8005
    assert DEFAULT_PORTS["order-verdicts"] == 8006
    for name in SERVICES:
        process = service_process(name)
        assert name in DEFAULT_PORTS
        assert process.port_env.isupper() and "-" not in process.port_env
