"""One order makes one trace across the four services, read back from Jaeger's query API.

Jaeger v2 (built from the Go module proxy, stack/gotools.py) runs as the embedded stack's
optional component; the services are started after it, so the stack gives them
OTEL_EXPORTER_OTLP_ENDPOINT and tracing turns on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.contracts import ORDER_CREATED_TOPIC, TOPIC_PARTITIONS, OutboxStatus
from shared.mongo import make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from stack import Stack
from stack.gotools import JAEGER, ensure
from stack.issuer import UserTokens
from tests.waiting import wait_until

# A cold build of Jaeger takes minutes; `make test` builds it before pytest runs (make jaeger).
pytestmark = pytest.mark.timeout(900)

SERVICES = ("order", "relay", "inventory", "email")


@pytest.fixture(scope="module")
def traced_stack(stack: Stack) -> Iterator[dict[str, str]]:
    ensure(JAEGER)
    run = uuid.uuid4().hex[:8]
    env = {
        "ORDER_DATABASE": f"traces_{run}",
        "RELAY_DATABASE": f"traces_{run}",
        "RELAY_TRANSACTIONAL_ID": f"traces-{run}",
        "INVENTORY_GROUP_ID": f"traces-inventory-{run}",
        "INVENTORY_DATABASE": f"traces_inventory_{run}",
        "EMAIL_GROUP_ID": f"traces-email-{run}",
        # Export within a fraction of a second instead of the SDK's 5 s default.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    stack.start("jaeger")
    try:
        yield env
    finally:
        for name in (*reversed(SERVICES), "jaeger"):
            stack.stop(name)


async def _groups_start_at_the_end(stack: Stack, groups: list[str]) -> None:
    """New groups skip what other tests left in order.created: only our order is traced."""
    for group in groups:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.config.kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [TopicPartition(ORDER_CREATED_TOPIC, p) for p in range(TOPIC_PARTITIONS)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.commit({tp: int(ends[tp]) for tp in tps})
        finally:
            await consumer.stop()


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


def _one(spans: dict[str, dict[str, Any]], service: str, prefix: str) -> dict[str, Any]:
    found = [
        s
        for s in spans.values()
        if s["service"] == service and s["operationName"].startswith(prefix)
    ]
    assert len(found) == 1, f"{service} {prefix!r}: {[s['operationName'] for s in spans.values()]}"
    return found[0]


async def test_one_order_is_one_trace_across_the_four_services(
    stack: Stack, traced_stack: dict[str, str]
) -> None:
    env = traced_stack
    await _groups_start_at_the_end(stack, [env["INVENTORY_GROUP_ID"], env["EMAIL_GROUP_ID"]])
    for name in SERVICES:
        stack.start(name, env)
    order_url = f"http://127.0.0.1:{stack.port_of('order')}"
    jaeger_url = stack.config.jaeger_url
    body = {
        "userId": "trace-user",
        "customerEmail": "trace@example.com",
        "items": [{"sku": "SKU-TRACE", "quantity": 1, "unitPrice": "1.00"}],
    }
    async with httpx.AsyncClient(timeout=10) as http:
        created = await http.post(
            f"{order_url}/orders",
            json=body,
            headers=UserTokens.for_stack(stack.config).headers("trace-user"),
        )
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]

        mongo = make_mongo_client(stack.config.mongo_uri, 5.0, "trace-test")
        try:
            event = await mongo[env["ORDER_DATABASE"]][OUTBOX_COLLECTION].find_one(
                {"aggregateId": order_id}
            )
            assert event is not None
            await wait_until(
                lambda: _published(mongo, env["ORDER_DATABASE"], order_id),
                timeout=30,
                message="the order's event published",
            )
        finally:
            await mongo.drop_database(env["ORDER_DATABASE"])
            await mongo.drop_database(env["INVENTORY_DATABASE"])
            await mongo.close()
        _, trace_id, api_span_id, _ = event["traceparent"].split("-")

        async def complete_trace() -> dict[str, Any] | None:
            answer = await http.get(f"{jaeger_url}/api/traces/{trace_id}")
            if answer.status_code != 200:
                return None
            data: dict[str, Any] = answer.json()["data"][0]
            names = {s["operationName"] for s in data["spans"]}
            wanted = ("smtp send", "inventory reservation transaction", "order transaction")
            publish = any(n.startswith("publish ") for n in names)
            return data if publish and all(w in names for w in wanted) else None

        trace = await wait_until(
            complete_trace, timeout=60, interval=0.5, message="the order's whole trace in Jaeger"
        )
        assert trace is not None
        spans = _by_id(trace)
        assert {s["service"] for s in spans.values()} >= set(SERVICES)

        # The stored traceparent is the API request span's own context.
        api = spans[api_span_id]
        assert api["service"] == "order"
        assert api["operationName"].startswith("POST /orders")
        assert _parent(_one(spans, "order", "order transaction")) == api_span_id

        # The relay publishes as a child of the stored context, linked to its batch's span.
        publish = _one(spans, "relay", "publish ")
        assert _parent(publish) == api_span_id
        links = [r for r in publish["references"] if r["refType"] == "FOLLOWS_FROM"]
        assert len(links) == 1
        batch_trace = await http.get(f"{jaeger_url}/api/traces/{links[0]['traceID']}")
        batch = _by_id(batch_trace.json()["data"][0])[links[0]["spanID"]]
        assert batch["operationName"] == "relay publish batch"

        # Each consumer handles the record as a child of its traceparent header, and its side
        # effect is a child of that.
        for service, effect in (
            ("inventory", "inventory reservation transaction"),
            ("email", "smtp send"),
        ):
            process = _one(spans, service, f"{service} process ")
            assert _parent(process) == api_span_id
            assert _parent(_one(spans, service, effect)) == process["spanID"]


async def _published(mongo: Any, database: str, order_id: str) -> bool:
    doc = await mongo[database][OUTBOX_COLLECTION].find_one({"aggregateId": order_id})
    return doc is not None and doc["status"] == OutboxStatus.PUBLISHED.value
