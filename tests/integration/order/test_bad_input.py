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
    ("null userId (leave it out instead)", order_body(userId=None), "userId"),
    ("missing items", _without("items"), "items"),
    ("unknown top-level field", order_body(coupon="FREE"), "coupon"),
    ("unknown item field", order_body(items=[_item(colour="red")]), "items.0.colour"),
    ("quantity as string", order_body(items=[_item(quantity="2")]), "items.0.quantity"),
    ("fractional quantity", order_body(items=[_item(quantity=2.5)]), "items.0.quantity"),
    ("NaN quantity", order_body(items=[_item(quantity=float("nan"))]), "items.0.quantity"),
    ("quantity 1e300", order_body(items=[_item(quantity=1e300)]), "items.0.quantity"),
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
    ("blank sku", order_body(items=[_item(sku="   ")]), "items.0.sku"),
    ("NUL sku", order_body(items=[_item(sku="\u0000")]), "items.0.sku"),
    ("bidi override sku", order_body(items=[_item(sku="\u202e")]), "items.0.sku"),
    ("bidi isolate in sku", order_body(items=[_item(sku="SKU-\u2066A")]), "items.0.sku"),
    ("lone surrogate sku", order_body(items=[_item(sku="SKU-\ud800")]), "items.0.sku"),
    ("blank userId", order_body(userId=" \t "), "userId"),
    ("control character in userId", order_body(userId="user-1\u0007"), "userId"),
    ("newline in userId", order_body(userId="user-1\nadmin"), "userId"),
    ("C1 control in userId", order_body(userId="user\u0085"), "userId"),
    ("bidi override in userId", order_body(userId="user\u202e1"), "userId"),
    (
        "price with trailing newline",
        order_body(items=[_item(unitPrice="12.50\n")]),
        "items.0.unitPrice",
    ),
    ("bidi override in email", order_body(customerEmail="a\u202eb@example.com"), "customerEmail"),
    (
        "control character in email",
        order_body(customerEmail="a\u0000b@example.com"),
        "customerEmail",
    ),
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
    # json.dumps escapes non-ASCII ("\\u202e"), so even a lone surrogate travels as valid JSON.
    response = await empty.http.post(
        "/orders", content=json.dumps(body), headers={"content-type": "application/json"}
    )

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


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe=P\x00",
        b'{"userId": "caf\xe9"}',
        b"[" * 5000 + b"]" * 5000,
        json.dumps(order_body()).encode("utf-16"),
    ],
    ids=["not UTF-8", "Latin-1 inside JSON", "nested too deep", "UTF-16 (RFC 8259: UTF-8 only)"],
)
async def test_unparseable_body_is_422_json_invalid(empty: Api, content: bytes) -> None:
    response = await empty.http.post(
        "/orders", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == "body"
    assert response.json()["fields"][0]["type"] == "json_invalid"


async def test_body_with_a_utf8_byte_order_mark_is_accepted(api: Api) -> None:
    # RFC 8259 lets a parser ignore a BOM, and the API always has.
    content = b"\xef\xbb\xbf" + json.dumps(order_body()).encode()
    response = await api.http.post(
        "/orders", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(("quantity", "stored"), [(2.0, 2), (1476.0, 1476), (1e4, 10_000)], ids=str)
async def test_integral_number_quantity_is_accepted_as_json_schema_integer(
    api: Api, quantity: float, stored: int
) -> None:
    # JSON Schema (and so the published OpenAPI document) counts 2.0 as an integer.
    body = order_body(items=[_item(quantity=quantity)])
    response = await api.http.post("/orders", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["items"][0]["quantity"] == stored


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
    # Refused before routing, yet counted under its route template.
    metrics = (await empty.http.get("/metrics")).text
    assert 'http_requests_total{method="POST",route="/orders",status="413"} 1.0' in metrics


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
