"""Extra service instances: a second copy of a service runs beside the first with its own port
and log (the chaos and relay-failover tests start ``relay-2`` this way)."""

from __future__ import annotations

import httpx
import pytest

from stack import Stack
from stack.supervisor import service_exists


@pytest.mark.skipif(not service_exists("order"), reason="services/order not written yet")
def test_an_extra_instance_gets_its_own_port_log_and_lifecycle(stack: Stack) -> None:
    stack.start("order", instance="order-2")
    try:
        port = stack.port_of("order-2")
        assert port != stack.config.port_of("order")
        assert stack.is_running("order-2") and not stack.is_running("order")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        assert stack.logs_path("order-2").name == "order-2.log"
        assert stack.status()["order-2"]["running"]
        stack.kill("order-2")
        assert not stack.is_running("order-2")
        stack.restart("order-2")
        assert stack.is_running("order-2")
        assert stack.port_of("order-2") == port, "a restarted instance keeps its port"
    finally:
        stack.stop("order-2")
    assert not stack.is_running("order-2")
    assert "order-2" not in stack.status()
