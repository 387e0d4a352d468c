"""Every malformed request gets a 4xx naming the field, and writes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.order.conftest import Api, order_body


def _item(**overrides: Any) -> dict[str, Any]:
    return {"sku": "SKU-A", "quantity": 1, "unitPrice": "1.00", **overrides}


def _without(field: str) -> dict[str, Any]:
    body = order_body()
    del body[field]
    return body


CASES: list[tuple[str, Any, str]] = [
    ("missing userId", _without("userId"), "userId"),
    ("missing items", _without("items"), "items"),
    ("unknown top-level field", order_body(coupon="FREE"), "coupon"),
    ("unknown item field", order_body(items=[_item(colour="red")]), "items.0.colour"),
    ("quantity as string", order_body(items=[_item(quantity="2")]), "items.0.quantity"),
    ("fractional quantity", order_body(items=[_item(quantity=2.5)]), "items.0.quantity"),
    ("boolean quantity", order_body(items=[_item(quantity=True)]), "items.0.quantity"),
    ("zero quantity", order_body(items=[_item(quantity=0)]), "items.0.quantity"),
    ("quantity over 10000", order_body(items=[_item(quantity=10_001)]), "items.0.quantity"),
    ("empty items", order_body(items=[]), "items"),
    ("101 items", order_body(items=[_item(sku=f"S{i}") for i in range(101)]), "items"),
    ("negative price", order_body(items=[_item(unitPrice="-1.00")]), "items.0.unitPrice"),
    ("NaN price", order_body(items=[_item(unitPrice="NaN")]), "items.0.unitPrice"),
    ("infinite price", order_body(items=[_item(unitPrice="Infinity")]), "items.0.unitPrice"),
    ("three decimals", order_body(items=[_item(unitPrice="1.005")]), "items.0.unitPrice"),
    ("price as JSON number", order_body(items=[_item(unitPrice=12.5)]), "items.0.unitPrice"),
    ("price not a number", order_body(items=[_item(unitPrice="twelve")]), "items.0.unitPrice"),
    ("empty sku", order_body(items=[_item(sku="")]), "items.0.sku"),
    ("invalid email", order_body(customerEmail="not-an-email"), "customerEmail"),
    ("userId not a string", order_body(userId=42), "userId"),
    ("items not a list", order_body(items={"sku": "A"}), "items"),
    ("body is a list", [order_body()], "body"),
]


@pytest.fixture
async def empty(api: Api) -> AsyncIterator[Api]:
    assert await api.counts() == (0, 0)
    yield api
    assert await api.counts() == (0, 0), "a refused request wrote something"


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_invalid_body_is_422_naming_the_field(empty: Api, body: Any, field: str) -> None:
    response = await empty.http.post("/orders", json=body)

    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "validation_error"
    assert field in [f["field"] for f in error["fields"]], error


async def test_body_that_is_not_json_is_422(empty: Api) -> None:
    response = await empty.http.post(
        "/orders", content=b'{"userId": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["fields"][0] == {
        "field": "body",
        "message": "body is not valid JSON",
        "type": "json_invalid",
    }


async def test_empty_body_is_422(empty: Api) -> None:
    response = await empty.http.post("/orders", content=b"")
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "body"


async def test_body_over_64_kib_is_413(empty: Api) -> None:
    padding = "x" * (64 * 1024)
    response = await empty.http.post("/orders", json=order_body(userId=padding))
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert response.json()["fields"][0]["field"] == "body"


async def test_chunked_body_over_64_kib_is_413(empty: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit is enforced while reading.
        yield json.dumps(order_body())[:-1].encode()
        for _ in range(100):
            yield b" " * 1024

    response = await empty.http.post(
        "/orders", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    "key", [b"", b"x" * 256, "caf\u00e9".encode("latin-1"), b"tab\there"], ids=str
)
async def test_invalid_idempotency_key_is_422(empty: Api, key: bytes) -> None:
    response = await empty.http.post(
        "/orders", json=order_body(), headers={b"Idempotency-Key": key}
    )
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == "Idempotency-Key"
