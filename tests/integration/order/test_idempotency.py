"""Idempotency-Key: one order per key, whatever the retries and races."""

from __future__ import annotations

import asyncio

from tests.integration.order.conftest import Api, order_body


async def test_same_key_and_body_replays_the_original_order(api: Api) -> None:
    headers = {"Idempotency-Key": "retry-me-1"}
    first = await api.http.post("/orders", json=order_body(), headers=headers)
    # Same meaning, different spelling: key order and "0.1" vs "0.10" do not matter.
    body = order_body()
    body["items"][1]["unitPrice"] = "0.1"
    second = await api.http.post("/orders", json=dict(reversed(body.items())), headers=headers)

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.json() == first.json()
    assert second.headers["location"] == first.headers["location"]
    assert await api.counts() == (1, 1)


async def test_same_key_with_another_body_is_409_naming_no_order_and_writes_nothing(
    api: Api,
) -> None:
    headers = {"Idempotency-Key": "retry-me-2"}
    first = await api.http.post("/orders", json=order_body(), headers=headers)

    other_items = [{"sku": "SKU-C", "quantity": 1, "unitPrice": "1.00"}]
    other = await api.http.post("/orders", json=order_body(items=other_items), headers=headers)

    assert first.status_code == 201
    assert other.status_code == 409
    assert other.json()["error"] == "idempotency_key_reused"
    assert other.json()["fields"][0]["field"] == "Idempotency-Key"
    # The 409 must not hand out the id of the order the key made (GET /orders/{id} shows it).
    assert first.json()["id"] not in other.text
    assert await api.counts() == (1, 1)


async def test_same_key_from_two_users_makes_two_orders(api: Api) -> None:
    # Keys are scoped to the caller: another user's key says nothing about this user's orders.
    key = {"Idempotency-Key": "checkout-1"}
    # Keyed by the token's subject: the bodies carry no userId at all.
    body = order_body()
    del body["userId"]
    alice = await api.http.post("/orders", json=body, headers={**key, **api.auth("alice")})
    bob = await api.http.post("/orders", json=body, headers={**key, **api.auth("bob")})
    bob_again = await api.http.post("/orders", json=body, headers={**key, **api.auth("bob")})

    assert (alice.status_code, bob.status_code, bob_again.status_code) == (201, 201, 200)
    assert alice.json()["id"] != bob.json()["id"] == bob_again.json()["id"]
    assert alice.json()["id"] not in bob.text
    assert (alice.json()["userId"], bob.json()["userId"]) == ("alice", "bob")
    assert await api.counts() == (2, 2)


async def test_concurrent_requests_of_two_users_with_one_key_create_one_order_each(
    api: Api,
) -> None:
    key = {"Idempotency-Key": "checkout-shared"}

    responses = await asyncio.gather(
        *(
            api.http.post(
                "/orders", json=order_body(userId=user), headers={**key, **api.auth(user)}
            )
            for user in ["alice", "bob"] * 10
        )
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 18 + [201] * 2, [r.text for r in responses if r.status_code >= 300]
    ids: dict[str, set[str]] = {}
    for r in responses:
        ids.setdefault(r.json()["userId"], set()).add(r.json()["id"])
    assert {user: len(found) for user, found in ids.items()} == {"alice": 1, "bob": 1}
    assert await api.counts() == (2, 2)


async def test_concurrent_requests_with_one_key_create_one_order_and_one_event(api: Api) -> None:
    headers = {"Idempotency-Key": "checkout-7f3a"}

    responses = await asyncio.gather(
        *(api.http.post("/orders", json=order_body(), headers=headers) for _ in range(20))
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await api.counts() == (1, 1)


async def test_different_keys_create_different_orders(api: Api) -> None:
    a = await api.http.post("/orders", json=order_body(), headers={"Idempotency-Key": "a"})
    b = await api.http.post("/orders", json=order_body(), headers={"Idempotency-Key": "b"})
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]
    assert await api.counts() == (2, 2)
