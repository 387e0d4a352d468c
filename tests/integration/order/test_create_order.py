"""POST /orders and GET /orders/{id} against the real MongoDB of the embedded stack."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

from bson import Decimal128, ObjectId

from shared.contracts import AGGREGATE_ORDER, EVENT_ORDER_CREATED, OutboxStatus
from shared.events import parse_order_created
from shared.slots import slot_for
from tests.integration.order.conftest import Api, order_body

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_created_order_and_its_pending_event_are_stored_together(api: Api) -> None:
    response = await api.http.post(
        "/orders",
        json=order_body(),
        headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/orders/{body['id']}"
    assert body["total"] == "25.30"  # 2 x 12.50 + 3 x 0.10, exactly
    assert body["status"] == "placed"
    assert body["items"][1] == {"sku": "SKU-B", "quantity": 3, "unitPrice": "0.10"}
    assert set(body) == {
        "id",
        "userId",
        "customerEmail",
        "items",
        "total",
        "status",
        "history",
        "createdAt",
        "cancelledAt",
    }
    assert body["cancelledAt"] is None
    assert body["history"] == [
        {
            "status": "placed",
            "at": body["createdAt"],
            "cause": "POST /orders",
            "eventId": None,
            "note": None,
        }
    ]

    order = await api.db.orders.find_one({"_id": ObjectId(body["id"])})
    assert order is not None
    assert order["total"] == Decimal128("25.30")
    assert order["version"] == 1
    assert "idempotencyKey" not in order
    events = await api.outbox.find({"aggregateId": body["id"]}).to_list()
    assert len(events) == 1
    event = events[0]
    assert event["aggregateType"] == AGGREGATE_ORDER
    assert event["eventType"] == EVENT_ORDER_CREATED
    assert event["aggregateVersion"] == order["version"] == 1
    assert event["status"] == OutboxStatus.PENDING
    assert event["attempts"] == 0
    assert event["publishedAt"] is None
    # Its relay slot, stored in the same transaction (RELAY_SLOTS is 16 by default).
    assert event["slot"] == slot_for(body["id"], 16)
    # The caller's trace continues: same trace id, this request as the parent span.
    assert re.fullmatch(rf"00-{TRACE_ID}-[0-9a-f]{{16}}-01", event["traceparent"])
    payload = parse_order_created(event["payload"].encode())
    assert payload.order_id == body["id"]
    assert payload.total == Decimal("25.30")
    assert payload.created_at == datetime.fromisoformat(body["createdAt"])
    assert payload.created_at.tzinfo is not None
    assert payload.created_at.utcoffset() == UTC.utcoffset(None)


async def test_invalid_traceparent_is_replaced_by_a_new_trace(api: Api) -> None:
    response = await api.http.post(
        "/orders", json=order_body(), headers={"traceparent": "00-not-a-trace-01"}
    )
    assert response.status_code == 201
    event = await api.outbox.find_one({"aggregateId": response.json()["id"]})
    assert event is not None
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", event["traceparent"])


async def test_get_order_shows_the_order_with_its_outbox_events(api: Api) -> None:
    created = (await api.http.post("/orders", json=order_body())).json()

    response = await api.http.get(f"/orders/{created['id']}")

    assert response.status_code == 200
    body = response.json()
    events = body.pop("events")
    assert body == created
    assert len(events) == 1
    assert events[0]["eventType"] == EVENT_ORDER_CREATED
    assert events[0]["status"] == "Pending"
    assert events[0]["publishedAt"] is None
    stored = await api.outbox.find_one({"aggregateId": created["id"]})
    assert stored is not None
    assert events[0]["eventId"] == str(stored["_id"])


async def test_published_event_shows_as_published(api: Api) -> None:
    created = (await api.http.post("/orders", json=order_body())).json()
    published_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    # Stand in for the relay: mark the event published.
    await api.outbox.update_one(
        {"aggregateId": created["id"]},
        {"$set": {"status": OutboxStatus.PUBLISHED.value, "publishedAt": published_at}},
    )

    events = (await api.http.get(f"/orders/{created['id']}")).json()["events"]

    assert events[0]["status"] == "Published"
    assert datetime.fromisoformat(events[0]["publishedAt"]) == published_at


async def test_unknown_order_is_404(api: Api) -> None:
    response = await api.http.get(f"/orders/{ObjectId()}")
    assert response.status_code == 404
    assert response.json()["error"] == "order_not_found"


async def test_malformed_order_id_is_404_not_500(api: Api) -> None:
    for bad in ("nope", "0" * 23, "g" * 24, "%00", "a" * 300):
        response = await api.http.get(f"/orders/{bad}")
        assert response.status_code == 404, (bad, response.text)
        assert response.json()["fields"][0]["field"] == "order_id"


async def test_health_readiness_and_metrics(api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    ready = await api.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"indexes": True, "mongo": True, "transactions": True}
    await api.http.post("/orders", json=order_body())

    metrics = (await api.http.get("/metrics")).text

    assert "orders_created_total 1.0" in metrics
    assert 'http_requests_total{method="POST",route="/orders",status="201"} 1.0' in metrics
    assert 'http_request_duration_seconds_count{method="POST",route="/orders",status="201"}' in (
        metrics
    )
    assert "order_transaction_retries_total 0.0" in metrics


async def test_startup_creates_the_outbox_and_idempotency_indexes(api: Api) -> None:
    outbox = await api.outbox.index_information()
    assert outbox["status_1_createdAt_1"]["key"] == [("status", 1), ("createdAt", 1)]
    assert outbox["aggregateId_1_aggregateVersion_1"]["unique"] is True
    assert outbox["publishedAt_ttl"]["expireAfterSeconds"] == 7 * 24 * 3600
    assert outbox["slot_1_status_1_createdAt_1"]["key"] == [
        ("slot", 1),
        ("status", 1),
        ("createdAt", 1),
    ]
    orders = await api.db.orders.index_information()
    # Keys are scoped to the caller: unique per (userId, idempotencyKey), not globally.
    assert orders["userId_1_idempotencyKey_1_unique"]["key"] == [
        ("userId", 1),
        ("idempotencyKey", 1),
    ]
    assert orders["userId_1_idempotencyKey_1_unique"]["unique"] is True
    assert "idempotencyKey_unique" not in orders


async def test_openapi_documents_every_answer(api: Api) -> None:
    spec = (await api.http.get("/openapi.json")).json()
    post = spec["paths"]["/orders"]["post"]["responses"]
    assert {"200", "201", "409", "413", "422", "503"} <= set(post)
    get = spec["paths"]["/orders/{order_id}"]["get"]["responses"]
    assert {"200", "404", "503"} <= set(get)
    item = spec["components"]["schemas"]["OrderItemIn"]
    assert item["properties"]["unitPrice"]["type"] == "string"
    assert item["additionalProperties"] is False
