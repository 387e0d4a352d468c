"""One order can be followed through every service's log by field, through the whole verdict
loop, and fields hold what their names say.

The whole pipeline runs as processes (the failure-injection suite's :class:`Pipeline`, without
any fault); the test places one order and reads the services' own log files: the order event
from the order API through the relay to inventory, inventory's verdict from inventory's relay
to the order service's verdict consumer and email.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import httpx

from shared.contracts import EVENT_STOCK_RESERVED, INVENTORY_RESERVED_TOPIC, ORDER_CREATED_TOPIC
from stack import SERVICES, Stack
from tests.e2e.chaos.harness import INVENTORY_DB, ORDERS_DB, SKUS, Pipeline
from tests.waiting import wait_until

FOLLOW_TIMEOUT_SECONDS = 60.0
# The fields that follow one event everywhere (the style guide's promise).
TRAIL = ("event_id", "order_id", "topic", "partition", "offset")
# Who reads inventory's verdict (StockReserved): the order service's verdict consumer and
# email (which no longer reads the order event).
VERDICT_READERS = ("order-verdicts", "email")


def _lines(stack: Stack, instance: str) -> list[dict[str, Any]]:
    """The JSON lines of a service's log (the supervisor's own banner lines are skipped)."""
    path = stack.logs_path(instance)
    text = path.read_text("utf-8", "replace") if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def _follow(
    stack: Stack, field: str, value: str, services: tuple[str, ...]
) -> dict[str, list[dict[str, Any]]]:
    """Each service's lines whose ``field`` is ``value``, once every one of them has some."""

    def trail() -> dict[str, list[dict[str, Any]]] | None:
        found = {
            service: [line for line in _lines(stack, service) if line.get(field) == value]
            for service in services
        }
        return found if all(found.values()) else None

    found = await wait_until(
        trail,
        timeout=FOLLOW_TIMEOUT_SECONDS,
        interval=0.5,  # each poll parses the log files
        message=f"a line with {field} {value} in each of {services}",
    )
    assert found is not None
    return found


def _places(found: dict[str, list[dict[str, Any]]]) -> dict[str, set[tuple[str, int, int]]]:
    """Per service, where in Kafka its lines say the event was (lines carrying the whole trail)."""
    return {
        service: {
            (line["topic"], line["partition"], line["offset"])
            for line in lines
            if all(field in line for field in TRAIL)
        }
        for service, lines in found.items()
    }


async def _published_once_and_read_there(
    stack: Stack,
    event_id: str,
    order_id: str,
    topic: str,
    publisher: str,
    readers: tuple[str, ...],
    *,
    writer: str | None = None,
) -> None:
    """The event's lines in the logs of its ``writer`` (if it logs it), its ``publisher`` and
    its ``readers`` all name ``order_id``; the publisher's say where Kafka put it (one place, on
    ``topic``), and each reader's say it read it from that very place."""
    services = (*((writer,) if writer else ()), publisher, *readers)
    found = await _follow(stack, "event_id", event_id, services)
    assert all(line["order_id"] == order_id for lines in found.values() for line in lines)
    placed = _places(found)
    assert len(placed[publisher]) == 1, found[publisher]
    (published_on, _, _) = place = next(iter(placed[publisher]))
    assert published_on == topic
    for reader in readers:
        assert place in placed[reader], found[reader]


async def test_one_order_is_followed_through_every_log_by_event_id_and_order_id(
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

        async def confirmation() -> dict[str, Any] | None:
            """The history step the verdict made (it names the verdict's event)."""
            history = (await http.get(f"/orders/{order_id}", headers=auth)).json()["history"]
            return next((step for step in history if step["status"] == "confirmed"), None)

        step = await wait_until(
            confirmation,
            timeout=FOLLOW_TIMEOUT_SECONDS,
            interval=0.3,
            message="the order confirmed",
        )
    assert step["cause"] == EVENT_STOCK_RESERVED, step
    verdict_id = step["eventId"]

    # The order event: the API that wrote it, the relay that published it, inventory that read
    # it from that very place.
    await _published_once_and_read_there(
        stack, event_id, order_id, ORDER_CREATED_TOPIC, "relay", ("inventory",), writer="order"
    )
    # Inventory's verdict: its relay published it, and both of its consumers read it there.
    await _published_once_and_read_there(
        stack, verdict_id, order_id, INVENTORY_RESERVED_TOPIC, "inventory-relay", VERDICT_READERS
    )

    # And the order id alone finds the order in every service's log.
    await _follow(stack, "order_id", order_id, SERVICES)


def _latest(lines: list[dict[str, Any]], says: str) -> dict[str, Any]:
    """The latest line whose message contains ``says``: the pipeline's own process wrote it
    (a session's earlier modules may have run a process of theirs under the same name)."""
    return [line for line in lines if says in line["msg"]][-1]


async def test_log_fields_hold_what_their_names_say(pipeline: Pipeline, stack: Stack) -> None:
    relay = _lines(stack, "relay")
    acquired = [line for line in relay if line["msg"] == "lease acquired"]
    assert acquired and all(isinstance(line["epoch"], int) for line in acquired), acquired
    assert not any("attempt" in line for line in acquired), "a lease epoch is not an attempt"
    started = next(line for line in relay if line["msg"] == "relay started")
    assert started["instance"] and "component" not in started
    # Each outbox has relays of its own: the line names the database whose outbox it serves.
    assert _latest(relay, "relay started")["database"] == ORDERS_DB
    inventory_relay = _lines(stack, "inventory-relay")
    assert _latest(inventory_relay, "relay started")["database"] == INVENTORY_DB
    acquired = [line for line in inventory_relay if line["msg"] == "lease acquired"]
    assert acquired and all(isinstance(line["epoch"], int) for line in acquired), acquired

    bound = _latest(_lines(stack, "order"), "bound to MongoDB")
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
