"""POST /orders/{id}/cancel: the order and its OrderCancelled event change together, once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bson import ObjectId

from shared.contracts import EVENT_ORDER_CANCELLED, EVENT_ORDER_CREATED, OutboxStatus
from shared.slots import slot_for
from tests.integration.order.conftest import Api, order_body


async def _create(api: Api, **overrides: Any) -> dict[str, Any]:
    body = order_body(**overrides)
    response = await api.http.post("/orders", json=body, headers=api.auth(body["userId"]))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _events(api: Api, order_id: str) -> list[dict[str, Any]]:
    cursor = api.outbox.find({"aggregateId": order_id}).sort("aggregateVersion", 1)
    return [doc async for doc in cursor]


async def test_cancel_marks_the_order_cancelled_and_writes_one_versioned_event(api: Api) -> None:
    order = await _create(api)

    response = await api.http.post(f"/orders/{order['id']}/cancel")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == order["id"]
    assert body["status"] == "cancelled"
    assert body["cancelledAt"] is not None
    stored = await api.db.orders.find_one({})
    assert (stored["status"], stored["version"]) == ("cancelled", 2)
    events = await _events(api, order["id"])
    assert [(e["eventType"], e["aggregateVersion"]) for e in events] == [
        (EVENT_ORDER_CREATED, 1),
        (EVENT_ORDER_CANCELLED, 2),
    ]
    cancelled = events[1]
    assert cancelled["status"] == OutboxStatus.PENDING
    # Both events of the order in its one slot: one publisher keeps them in order.
    assert cancelled["slot"] == events[0]["slot"] == slot_for(order["id"], 16)
    payload = json.loads(cancelled["payload"])
    assert payload["orderId"] == order["id"]
    assert payload["customerEmail"] == order["customerEmail"]
    assert payload["total"] == order["total"]
    read = await api.http.get(f"/orders/{order['id']}")
    assert read.json()["status"] == "cancelled"
    assert [e["eventType"] for e in read.json()["events"]] == [
        EVENT_ORDER_CREATED,
        EVENT_ORDER_CANCELLED,
    ]


async def test_cancelling_a_cancelled_order_answers_the_same_order_and_writes_no_event(
    api: Api,
) -> None:
    order = await _create(api)
    first = await api.http.post(f"/orders/{order['id']}/cancel")

    again = await api.http.post(f"/orders/{order['id']}/cancel")

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json()
    assert "idempotent-replayed" not in again.headers
    assert await api.counts() == (1, 2)


async def test_cancel_of_an_unknown_or_malformed_id_is_404_and_writes_nothing(api: Api) -> None:
    for order_id in ("0123456789abcdef01234567", "not-an-id"):
        response = await api.http.post(f"/orders/{order_id}/cancel")
        assert response.status_code == 404
        assert response.json()["error"] == "order_not_found"
    assert await api.counts() == (0, 0)


async def test_concurrent_cancels_of_one_order_write_one_event(api: Api) -> None:
    order = await _create(api)

    responses = await asyncio.gather(
        *(api.http.post(f"/orders/{order['id']}/cancel") for _ in range(12))
    )

    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses]
    assert {r.json()["cancelledAt"] for r in responses} == {responses[0].json()["cancelledAt"]}
    events = await _events(api, order["id"])
    assert [e["eventType"] for e in events] == [EVENT_ORDER_CREATED, EVENT_ORDER_CANCELLED]
    stored = await api.db.orders.find_one({})
    assert stored["version"] == 2


async def test_cancel_with_the_same_key_replays_and_with_it_on_another_order_is_409(
    api: Api,
) -> None:
    one = await _create(api)
    two = await _create(api)
    headers = {"Idempotency-Key": "cancel-1"}
    first = await api.http.post(f"/orders/{one['id']}/cancel", headers=headers)

    replay = await api.http.post(f"/orders/{one['id']}/cancel", headers=headers)
    reused = await api.http.post(f"/orders/{two['id']}/cancel", headers=headers)

    assert first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert reused.status_code == 409
    assert reused.json()["fields"][0]["field"] == "Idempotency-Key"
    # The key's other order is not named: knowing one order id must not reveal the user's others.
    assert one["id"] not in reused.text
    untouched = await api.db.orders.find_one({"_id": ObjectId(two["id"])})
    assert (untouched["status"], untouched["version"]) == ("placed", 1)
    assert await api.counts() == (2, 3)


async def test_a_cancel_key_is_scoped_to_the_orders_user(api: Api) -> None:
    mine = await _create(api, userId="user-a")
    theirs = await _create(api, userId="user-b")
    key = {"Idempotency-Key": "same-words"}

    a = await api.http.post(f"/orders/{mine['id']}/cancel", headers={**key, **api.auth("user-a")})
    b = await api.http.post(f"/orders/{theirs['id']}/cancel", headers={**key, **api.auth("user-b")})

    assert (a.status_code, b.status_code) == (200, 200)
    assert "idempotent-replayed" not in b.headers
    assert await api.counts() == (2, 4)


async def test_cancel_is_documented_in_openapi(api: Api) -> None:
    spec = (await api.http.get("/openapi.json")).json()
    operation = spec["paths"]["/orders/{order_id}/cancel"]["post"]
    assert {"200", "404", "409", "503"} <= set(operation["responses"])
    assert "OrderCancelled" in operation["description"]
    assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])


async def test_concurrent_cancels_with_one_key_cancel_once_and_replay_the_rest(api: Api) -> None:
    order = await _create(api)
    headers = {"Idempotency-Key": "cancel-race"}

    responses = await asyncio.gather(
        *(api.http.post(f"/orders/{order['id']}/cancel", headers=headers) for _ in range(8))
    )

    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert replayed.count("true") == 7 and replayed.count(None) == 1
    assert await api.counts() == (1, 2)


async def test_one_key_racing_on_two_orders_of_a_user_cancels_only_one(api: Api) -> None:
    one, two = await _create(api), await _create(api)
    headers = {"Idempotency-Key": "cancel-one-of-two"}

    first, second = await asyncio.gather(
        api.http.post(f"/orders/{one['id']}/cancel", headers=headers),
        api.http.post(f"/orders/{two['id']}/cancel", headers=headers),
    )

    assert sorted([first.status_code, second.status_code]) == [200, 409]
    assert await api.db.orders.count_documents({"status": "cancelled"}) == 1
    assert await api.counts() == (2, 3)
