"""An order id spelt another way (hex in upper case) reaches the same order, and only the stored,
canonical spelling leaves the API: in the body, the outbox event, its slot and the logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from shared.contracts import EVENT_ORDER_CANCELLED, EVENT_ORDER_CREATED
from shared.slots import slot_for
from tests.integration.order.conftest import Api, order_body


async def _create(api: Api) -> dict[str, Any]:
    response = await api.http.post("/orders", json=order_body())
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_a_cancel_with_an_upper_case_id_writes_the_event_of_the_stored_id(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    order = await _create(api)
    canonical = order["id"]
    shouted = canonical.upper()
    assert shouted != canonical  # an ObjectId's hex always holds a letter in practice

    with caplog.at_level(logging.INFO, logger="services.order.cancel"):
        response = await api.http.post(f"/orders/{shouted}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["id"] == canonical
    events = [doc async for doc in api.outbox.find({}).sort("aggregateVersion", 1)]
    assert [(e["eventType"], e["aggregateId"]) for e in events] == [
        (EVENT_ORDER_CREATED, canonical),
        (EVENT_ORDER_CANCELLED, canonical),
    ]
    cancelled = events[1]
    # Same slot, so same relay and same Kafka key as the order's creation: per-order ordering.
    assert cancelled["slot"] == events[0]["slot"] == slot_for(canonical, api.settings.relay_slots)
    assert json.loads(cancelled["payload"])["orderId"] == canonical
    logged = [r for r in caplog.records if r.getMessage() == "order cancelled"]
    assert [getattr(r, "order_id", None) for r in logged] == [canonical]


async def test_a_retry_in_the_other_case_finds_the_cancel_already_made(api: Api) -> None:
    order = await _create(api)

    first = await api.http.post(f"/orders/{order['id'].upper()}/cancel")
    again = await api.http.post(f"/orders/{order['id']}/cancel")

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json()
    assert await api.counts() == (1, 2)


async def test_an_order_read_with_an_upper_case_id_answers_with_the_stored_id(api: Api) -> None:
    order = await _create(api)

    response = await api.http.get(f"/orders/{order['id'].upper()}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == order["id"]
    assert [e["eventType"] for e in body["events"]] == [EVENT_ORDER_CREATED]


async def test_an_unknown_id_in_upper_case_is_404_naming_the_canonical_id(api: Api) -> None:
    unknown = "0123456789ABCDEF01234567"

    response = await api.http.get(f"/orders/{unknown}")

    assert response.status_code == 404
    assert unknown.lower() in response.json()["message"]
    assert unknown not in response.text


async def test_the_order_id_parameter_says_either_case_is_served(api: Api) -> None:
    spec = (await api.http.get("/openapi.json")).json()
    for path, method in (("/orders/{order_id}", "get"), ("/orders/{order_id}/cancel", "post")):
        (param,) = [p for p in spec["paths"][path][method]["parameters"] if p["in"] == "path"]
        assert param["name"] == "order_id"
        description = param["description"].lower()
        assert "either case" in description, (path, param)
        assert "lower-case" in description, (path, param)
