"""A cancel racing inventory's verdict converges whichever commits first: the API in-process and
the verdict handler called directly, the other writer slipped in between a read and its write."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from bson import ObjectId

from services.order import cancel as cancel_module
from services.order.lifecycle import CAUSE_CANCEL, CAUSE_PLACE
from services.order.verdicts.handlers import OUTCOME_RECORDED, VerdictHandler
from shared.contracts import EVENT_ORDER_CANCELLED, EVENT_ORDER_CREATED, EVENT_STOCK_RESERVED
from tests.integration.order.conftest import Api, order_body
from tests.integration.order.verdict_world import delivery_of, reserved


async def _place(api: Api) -> dict[str, Any]:
    response = await api.http.post("/orders", json=order_body())
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


class _WriterAfterFirstRead:
    """The handler's orders collection, with ``other`` committing right after its first read."""

    def __init__(self, orders: Any, other: Callable[[], Awaitable[None]]) -> None:
        self._orders = orders
        self._other = other
        self.reads = 0

    async def find_one(self, *args: Any, **kwargs: Any) -> Any:
        found = await self._orders.find_one(*args, **kwargs)
        self.reads += 1
        if self.reads == 1:
            await self._other()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._orders, name)


async def test_a_cancel_committing_between_the_verdicts_read_and_write_wins(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = await _place(api)
    handler = VerdictHandler(api.mongo, api.settings.database)

    async def cancel() -> None:
        response = await api.http.post(f"/orders/{order['id']}/cancel")
        assert response.status_code == 200, response.text

    orders = _WriterAfterFirstRead(handler._orders, cancel)
    monkeypatch.setattr(handler, "_orders", orders)
    event_id = "verdict-1"

    outcome = await handler.handle(reserved(order), delivery_of(reserved(order), event_id))

    # The verdict read `placed`, missed (the cancel had committed), read again and recorded.
    assert (outcome, orders.reads) == (OUTCOME_RECORDED, 2)
    body = (await api.http.get(f"/orders/{order['id']}")).json()
    assert body["status"] == "cancelled"
    assert [(h["status"], h["cause"], h["eventId"]) for h in body["history"]] == [
        ("placed", CAUSE_PLACE, None),
        ("cancelled", CAUSE_CANCEL, None),
        ("cancelled", EVENT_STOCK_RESERVED, event_id),
    ]
    assert body["history"][-1]["note"] == "verdict after cancel: reserved"


async def test_a_verdict_committing_inside_the_cancels_transaction_is_cancelled_after(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = await _place(api)
    handler = VerdictHandler(api.mongo, api.settings.database)
    event_id = "verdict-2"
    original = cancel_module._key_used_elsewhere
    calls = 0

    async def verdict_then_lookup(*args: Any, **kwargs: Any) -> str | None:
        # Runs inside the cancel's transaction, after it read the order (`placed`): the
        # verdict commits now, outside it, so the transaction's write must conflict.
        nonlocal calls
        calls += 1
        if calls == 1:
            event = reserved(order)
            assert await handler.handle(event, delivery_of(event, event_id)) == "confirmed"
        return await original(*args, **kwargs)

    monkeypatch.setattr(cancel_module, "_key_used_elsewhere", verdict_then_lookup)

    response = await api.http.post(
        f"/orders/{order['id']}/cancel", headers={"Idempotency-Key": "race-1"}
    )

    assert response.status_code == 200, response.text
    # The transaction ran again (it conflicted with the verdict) and cancelled a confirmed order.
    assert calls == 2
    body = (await api.http.get(f"/orders/{order['id']}")).json()
    assert body["status"] == "cancelled"
    assert [(h["status"], h["cause"], h["eventId"]) for h in body["history"]] == [
        ("placed", CAUSE_PLACE, None),
        ("confirmed", EVENT_STOCK_RESERVED, event_id),
        ("cancelled", CAUSE_CANCEL, None),
    ]
    assert [e["eventType"] for e in body["events"]] == [EVENT_ORDER_CREATED, EVENT_ORDER_CANCELLED]
    stored = await api.db.orders.find_one({"_id": ObjectId(order["id"])})
    assert stored["version"] == 2
