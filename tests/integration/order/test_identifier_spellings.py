"""A user id or SKU spelt another way in Unicode (decomposed, as macOS and iOS text may be) is the
same id: stored, hashed and published in one form (NFC), so a retry still finds its order."""

from __future__ import annotations

import json

from tests.integration.order.conftest import Api, order_body

DECOMPOSED_USER = "jose\u0301"  # e + COMBINING ACUTE ACCENT
COMPOSED_USER = "jos\u00e9"
DECOMPOSED_SKU = "CAFE\u0301-250G"
COMPOSED_SKU = "CAF\u00c9-250G"


def _body(user: str, sku: str) -> dict[str, object]:
    return order_body(userId=user, items=[{"sku": sku, "quantity": 1, "unitPrice": "4.20"}])


async def test_a_retry_in_the_other_unicode_form_replays_the_order(api: Api) -> None:
    headers = {"Idempotency-Key": "nfc-retry-1"}

    # The token's subject in NFC; the body's userId, either spelling, is that subject.
    headers = {**headers, **api.auth(COMPOSED_USER)}
    first = await api.http.post(
        "/orders", json=_body(DECOMPOSED_USER, DECOMPOSED_SKU), headers=headers
    )
    retry = await api.http.post("/orders", json=_body(COMPOSED_USER, COMPOSED_SKU), headers=headers)

    assert first.status_code == 201, first.text
    assert retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["id"] == first.json()["id"]
    assert await api.counts() == (1, 1)


async def test_the_stored_and_published_ids_are_nfc(api: Api) -> None:
    response = await api.http.post(
        "/orders", json=_body(DECOMPOSED_USER, DECOMPOSED_SKU), headers=api.auth(COMPOSED_USER)
    )

    assert response.status_code == 201, response.text
    assert response.json()["userId"] == COMPOSED_USER
    assert response.json()["items"][0]["sku"] == COMPOSED_SKU
    stored = await api.db.orders.find_one({})
    assert (stored["userId"], stored["items"][0]["sku"]) == (COMPOSED_USER, COMPOSED_SKU)
    payload = json.loads((await api.outbox.find_one({}))["payload"])
    assert (payload["userId"], payload["items"][0]["sku"]) == (COMPOSED_USER, COMPOSED_SKU)


async def test_the_published_schema_says_identifiers_are_stored_in_nfc(api: Api) -> None:
    schemas = (await api.http.get("/openapi.json")).json()["components"]["schemas"]
    for field in (
        schemas["CreateOrderRequest"]["properties"]["userId"],
        schemas["OrderItemIn"]["properties"]["sku"],
    ):
        assert "NFC" in field["description"], field
