"""One order makes one trace through the whole verdict loop, read back from Jaeger's query API:
``POST /orders``, the order relay's publish, inventory's handling (its reservation and the
``StockReserved`` it writes to its own outbox, in one transaction), inventory's relay
publishing that verdict, and the two consumers of the verdict: the order service's (the order
becomes ``confirmed``) and email's (the confirmation).

Jaeger v2 (built from the Go module proxy, stack/gotools.py) runs as the embedded stack's
optional component; the services are started after it, so the stack gives them
OTEL_EXPORTER_OTLP_ENDPOINT and tracing turns on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shared.contracts import (
    EVENT_STOCK_RESERVED,
    INVENTORY_RESERVED_TOPIC,
    ORDER_CREATED_TOPIC,
    OutboxStatus,
)
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from stack import Stack
from stack.gotools import JAEGER, ensure
from stack.issuer import UserTokens
from tests.loop_services import LOOP_SERVICES, Loop
from tests.waiting import wait_until

# A cold build of Jaeger takes minutes; `make test` builds it before pytest runs (make jaeger).
pytestmark = pytest.mark.timeout(900)

# Every service's spans are exported under its name; both relays run the relay program.
TRACED_AS = {"order", "relay", "inventory", "order-verdicts", "email"}
SKU = "SKU-TRACE"


@pytest.fixture
async def traced_stack(stack: Stack) -> AsyncIterator[Loop]:
    """Jaeger, then the loop's services on this test's databases and consumer groups (positioned
    at the end of every topic they read: only this test's order is traced), the SKU in stock
    (the order is reserved)."""
    ensure(JAEGER)
    run = uuid.uuid4().hex[:8]
    loop = Loop(f"traces-{run}", f"traces_{run}", f"traces_inventory_{run}")
    await loop.start_groups_at_the_end(stack.config.kafka_bootstrap)
    mongo = make_mongo_client(stack.config.mongo_uri, 5.0, "trace-test")
    await mongo[loop.inventory_database]["stock"].insert_one({"sku": SKU, "available": 10})
    # In a thread: starting and stopping wait for the processes, and a loop blocked that long
    # makes the MongoDB client's monitor give the server up and cancel the drops below.
    await asyncio.to_thread(stack.start, "jaeger")
    try:
        # Export within a fraction of a second instead of the SDK's 5 s default.
        for name, env in loop.envs({"OTEL_BSP_SCHEDULE_DELAY": "100"}).items():
            await asyncio.to_thread(stack.start, name, env)
        yield loop
    finally:
        for name in (*reversed(LOOP_SERVICES), "jaeger"):
            await asyncio.to_thread(stack.stop, name)
        await mongo.drop_database(loop.orders_database)
        await mongo.drop_database(loop.inventory_database)
        await mongo.close()


def _by_id(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    processes = trace["processes"]
    spans = {}
    for span in trace["spans"]:
        span["service"] = processes[span["processID"]]["serviceName"]
        spans[span["spanID"]] = span
    return spans


def _parent(span: dict[str, Any]) -> str | None:
    refs = [r for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0]["spanID"] if refs else None


def _all(spans: dict[str, dict[str, Any]], service: str, name: str) -> list[dict[str, Any]]:
    return [s for s in spans.values() if s["service"] == service and s["operationName"] == name]


def _one(spans: dict[str, dict[str, Any]], service: str, name: str) -> dict[str, Any]:
    found = _all(spans, service, name)
    assert len(found) == 1, f"{service} {name!r}: {[s['operationName'] for s in spans.values()]}"
    return found[0]


# The spans of the loop, by service: the trace is complete once each is in Jaeger.
LOOP_SPANS = (
    ("order", "order transaction"),
    ("relay", f"publish {ORDER_CREATED_TOPIC}"),
    ("inventory", f"inventory process {ORDER_CREATED_TOPIC}"),
    ("inventory", "inventory reservation transaction"),
    ("relay", f"publish {INVENTORY_RESERVED_TOPIC}"),
    ("order-verdicts", f"order-verdicts process {INVENTORY_RESERVED_TOPIC}"),
    ("email", f"email process {INVENTORY_RESERVED_TOPIC}"),
    ("email", "smtp send"),
)


async def _outbox_event(mongo: MongoClient, database: str, order_id: str) -> dict[str, Any]:
    doc = await mongo[database][OUTBOX_COLLECTION].find_one({"aggregateId": order_id})
    assert doc is not None, f"no outbox event of {order_id} in {database}"
    return doc


async def test_one_order_is_one_trace_through_the_verdict_loop(
    stack: Stack, traced_stack: Loop
) -> None:
    loop = traced_stack
    order_url = f"http://127.0.0.1:{stack.port_of('order')}"
    jaeger_url = stack.config.jaeger_url
    body = {
        "userId": "trace-user",
        "customerEmail": "trace@example.com",
        "items": [{"sku": SKU, "quantity": 1, "unitPrice": "1.00"}],
    }
    auth = UserTokens.for_stack(stack.config).headers("trace-user")
    mongo = make_mongo_client(stack.config.mongo_uri, 5.0, "trace-test")
    async with httpx.AsyncClient(timeout=10) as http:
        created = await http.post(f"{order_url}/orders", json=body, headers=auth)
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]

        async def confirmed() -> bool:
            answer = await http.get(f"{order_url}/orders/{order_id}", headers=auth)
            return answer.status_code == 200 and answer.json()["status"] == "confirmed"

        try:
            await wait_until(confirmed, timeout=60, interval=0.3, message="the order confirmed")
            order_event = await _outbox_event(mongo, loop.orders_database, order_id)
            verdict = await _outbox_event(mongo, loop.inventory_database, order_id)
            assert verdict["eventType"] == EVENT_STOCK_RESERVED
            # Inventory's relay published it (the order's state followed from that publish).
            assert verdict["status"] == OutboxStatus.PUBLISHED.value
        finally:
            await mongo.close()
        _, trace_id, api_span_id, _ = order_event["traceparent"].split("-")

        async def complete_trace() -> dict[str, Any] | None:
            answer = await http.get(f"{jaeger_url}/api/traces/{trace_id}")
            if answer.status_code != 200:
                return None
            data: dict[str, Any] = answer.json()["data"][0]
            spans = _by_id(data)
            return data if all(_all(spans, *wanted) for wanted in LOOP_SPANS) else None

        trace = await wait_until(
            complete_trace, timeout=60, interval=0.5, message="the order's whole loop in Jaeger"
        )
        spans = _by_id(trace)
        assert {s["service"] for s in spans.values()} == TRACED_AS

        async def batch_of(publish: dict[str, Any]) -> dict[str, Any]:
            """The relay batch span ``publish`` is linked to (a trace of its own)."""
            links = [r for r in publish["references"] if r["refType"] == "FOLLOWS_FROM"]
            assert len(links) == 1, publish
            batch_trace = await http.get(f"{jaeger_url}/api/traces/{links[0]['traceID']}")
            return _by_id(batch_trace.json()["data"][0])[links[0]["spanID"]]

        # The stored traceparent is the API request span's own context.
        api = spans[api_span_id]
        assert api["service"] == "order"
        assert api["operationName"].startswith("POST /orders")
        assert _parent(_one(spans, "order", "order transaction")) == api_span_id

        # The order relay publishes as a child of the stored context, linked to its batch.
        publish = _one(spans, "relay", f"publish {ORDER_CREATED_TOPIC}")
        assert _parent(publish) == api_span_id
        assert (await batch_of(publish))["operationName"] == "relay publish batch"

        # Inventory handles the record as a child of its traceparent header; its reservation
        # transaction is a child of that handling, and the verdict it writes to its outbox in
        # that transaction carries the handling's context.
        inventory = _one(spans, "inventory", f"inventory process {ORDER_CREATED_TOPIC}")
        assert _parent(inventory) == api_span_id
        reservation = _one(spans, "inventory", "inventory reservation transaction")
        assert _parent(reservation) == inventory["spanID"]
        _, verdict_trace, verdict_parent, _ = verdict["traceparent"].split("-")
        assert (verdict_trace, verdict_parent) == (trace_id, inventory["spanID"])

        # Inventory's relay publishes the verdict as a child of that stored context.
        publish_verdict = _one(spans, "relay", f"publish {INVENTORY_RESERVED_TOPIC}")
        assert _parent(publish_verdict) == inventory["spanID"]
        assert (await batch_of(publish_verdict))["operationName"] == "relay publish batch"

        # Both consumers of the verdict handle it as a child of its traceparent header; email's
        # SMTP send is a child of its handling. Email does not handle the order event itself.
        verdicts = _one(
            spans, "order-verdicts", f"order-verdicts process {INVENTORY_RESERVED_TOPIC}"
        )
        assert _parent(verdicts) == inventory["spanID"]
        email = _one(spans, "email", f"email process {INVENTORY_RESERVED_TOPIC}")
        assert _parent(email) == inventory["spanID"]
        assert _parent(_one(spans, "email", "smtp send")) == email["spanID"]
        assert not _all(spans, "email", f"email process {ORDER_CREATED_TOPIC}")
