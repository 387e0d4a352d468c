"""An order belongs to the token's subject: nobody else reads or cancels it, and the API is no
oracle for which ids exist (another user's order is answered byte for byte like an unknown id).
Support staff (the ``order-support`` role) read every order but cancel only their own."""

from __future__ import annotations

from typing import Any

import httpx
from bson import ObjectId

from shared.auth import SUPPORT_ROLE
from tests.integration.order.conftest import Api, order_body


async def _create(api: Api, user: str) -> dict[str, Any]:
    response = await api.http.post("/orders", json=order_body(userId=user), headers=api.auth(user))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _as_if_unknown(unknown: httpx.Response, unknown_id: str, order_id: str) -> tuple[int, bytes]:
    # The unknown id's answer, spelt for the other id (both ids have 24 characters).
    return unknown.status_code, unknown.content.replace(unknown_id.encode(), order_id.encode())


def _answer(response: httpx.Response) -> tuple[int, bytes]:
    return response.status_code, response.content


async def test_another_users_order_reads_and_cancels_exactly_like_an_unknown_id(api: Api) -> None:
    alices = await _create(api, "alice")
    before = await api.counts()
    unknown_id = str(ObjectId())
    bob = api.auth("bob")

    read = await api.http.get(f"/orders/{alices['id']}", headers=bob)
    read_unknown = await api.http.get(f"/orders/{unknown_id}", headers=bob)
    cancel = await api.http.post(f"/orders/{alices['id']}/cancel", headers=bob)
    cancel_unknown = await api.http.post(f"/orders/{unknown_id}/cancel", headers=bob)

    assert read.status_code == cancel.status_code == 404
    assert _answer(read) == _as_if_unknown(read_unknown, unknown_id, alices["id"])
    assert _answer(cancel) == _as_if_unknown(cancel_unknown, unknown_id, alices["id"])
    assert read.headers.keys() == read_unknown.headers.keys()
    assert "alice" not in read.text and alices["customerEmail"] not in read.text
    # Bob's cancel changed nothing: no event, the order as Alice left it.
    assert await api.counts() == before
    mine = await api.http.get(f"/orders/{alices['id']}", headers=api.auth("alice"))
    assert mine.status_code == 200
    assert mine.json()["status"] == alices["status"]
    assert mine.json()["userId"] == "alice"


async def test_the_owner_reads_and_cancels_their_order(api: Api) -> None:
    alices = await _create(api, "alice")
    alice = api.auth("alice")

    read = await api.http.get(f"/orders/{alices['id']}", headers=alice)
    cancel = await api.http.post(f"/orders/{alices['id']}/cancel", headers=alice)

    assert read.status_code == 200 and read.json()["id"] == alices["id"]
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"


async def test_the_user_is_the_tokens_subject_when_the_body_names_none(api: Api) -> None:
    body = order_body()
    del body["userId"]

    response = await api.http.post("/orders", json=body, headers=api.auth("carol"))

    assert response.status_code == 201, response.text
    assert response.json()["userId"] == "carol"
    stored = await api.db.orders.find_one({})
    assert stored["userId"] == "carol"
    assert '"userId":"carol"' in (await api.outbox.find_one({}))["payload"].replace(" ", "")


async def test_a_body_userid_other_than_the_subject_is_403_naming_it_and_writes_nothing(
    api: Api,
) -> None:
    response = await api.http.post(
        "/orders",
        json=order_body(userId="alice"),
        headers={**api.auth("mallory"), "Idempotency-Key": "as-alice"},
    )

    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "user_mismatch"
    assert [field["field"] for field in body["fields"]] == ["userId"]
    assert await api.counts() == (0, 0)


async def test_support_reads_every_order_but_cancels_only_their_own(api: Api) -> None:
    alices = await _create(api, "alice")
    before = await api.counts()
    support = api.auth("sam", roles=(SUPPORT_ROLE,))
    unknown_id = str(ObjectId())

    read = await api.http.get(f"/orders/{alices['id']}", headers=support)
    unknown = await api.http.get(f"/orders/{unknown_id}", headers=support)
    cancel = await api.http.post(f"/orders/{alices['id']}/cancel", headers=support)
    cancel_unknown = await api.http.post(f"/orders/{unknown_id}/cancel", headers=support)

    assert read.status_code == 200, read.text
    assert (read.json()["userId"], read.json()["customerEmail"]) == (
        "alice",
        alices["customerEmail"],
    )
    assert unknown.status_code == 404
    # A cancel is the customer's decision: support's is answered like an unknown id's.
    assert _answer(cancel) == _as_if_unknown(cancel_unknown, unknown_id, alices["id"])
    assert await api.counts() == before
    # Another role is no support role.
    other_role = api.auth("sam", roles=("order-viewer",))
    assert (await api.http.get(f"/orders/{alices['id']}", headers=other_role)).status_code == 404
