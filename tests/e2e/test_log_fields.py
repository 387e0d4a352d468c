"""One event can be followed through the four services' logs by field, and fields hold what
their names say.

The whole pipeline runs as processes (the failure-injection suite's :class:`Pipeline`, without
any fault); the test places one order and reads the services' own log files.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import httpx

from shared.contracts import ORDER_CREATED_TOPIC
from stack import SERVICES, Stack
from tests.e2e.chaos.harness import ORDERS_DB, SKUS, Pipeline
from tests.waiting import wait_until

FOLLOW_TIMEOUT_SECONDS = 60.0
# The fields that follow one event everywhere (the style guide's promise).
TRAIL = ("event_id", "order_id", "topic", "partition", "offset")


def _lines(stack: Stack, instance: str) -> list[dict[str, Any]]:
    """The JSON lines of a service's log (the supervisor's own banner lines are skipped)."""
    path = stack.logs_path(instance)
    text = path.read_text("utf-8", "replace") if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_one_order_is_followed_through_all_four_logs_by_event_id(
    pipeline: Pipeline, stack: Stack
) -> None:
    user = "log-follower"
    auth = pipeline.tokens.headers(user)
    async with httpx.AsyncClient(base_url=pipeline.order_url, timeout=10) as http:
        created = await http.post(
            "/orders",
            json={
                "userId": user,
                "customerEmail": "follow@example.com",
                "items": [{"sku": SKUS[0], "quantity": 1, "unitPrice": "1.00"}],
            },
            headers=auth,
        )
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]
        read = await http.get(f"/orders/{order_id}", headers=auth)
        event_id = read.json()["events"][0]["eventId"]

    def trail() -> dict[str, list[dict[str, Any]]] | None:
        found = {
            service: [line for line in _lines(stack, service) if line.get("event_id") == event_id]
            for service in SERVICES
        }
        return found if all(found.values()) else None

    found = await wait_until(
        trail,
        timeout=FOLLOW_TIMEOUT_SECONDS,
        interval=0.5,  # each poll parses four log files
        message=f"a line with event_id {event_id} in each of {SERVICES}",
    )
    assert found is not None
    assert all(line["order_id"] == order_id for lines in found.values() for line in lines)
    # Where Kafka put it: the relay says so, and both consumers read it from that very place.
    placed = {
        service: {
            (line["topic"], line["partition"], line["offset"])
            for line in lines
            if all(field in line for field in TRAIL)
        }
        for service, lines in found.items()
        if service != "order"
    }
    relay_places = placed["relay"]
    assert len(relay_places) == 1, found["relay"]
    (topic, _, _) = place = next(iter(relay_places))
    assert topic == ORDER_CREATED_TOPIC
    assert place in placed["inventory"], found["inventory"]
    assert place in placed["email"], found["email"]


async def test_log_fields_hold_what_their_names_say(pipeline: Pipeline, stack: Stack) -> None:
    relay = _lines(stack, "relay")
    acquired = [line for line in relay if line["msg"] == "lease acquired"]
    assert acquired and all(isinstance(line["epoch"], int) for line in acquired), acquired
    assert not any("attempt" in line for line in acquired), "a lease epoch is not an attempt"
    started = next(line for line in relay if line["msg"] == "relay started")
    assert started["instance"] and "component" not in started

    bound = next(line for line in _lines(stack, "order") if "bound to MongoDB" in line["msg"])
    assert bound["database"] == ORDERS_DB and "component" not in bound

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as stock:
        json.dump({SKUS[0]: 5}, stock)
    try:
        code, out = await pipeline.run_module(
            "services.inventory", "seed-stock", stock.name, extra_env=pipeline.env_for("inventory")
        )
    finally:
        os.unlink(stock.name)
    assert code == 0, out
    seeded = next(json.loads(line) for line in out.splitlines() if '"stock seeded"' in line)
    assert seeded["path"] == stock.name and seeded["count"] == 1
    assert "component" not in seeded
