"""The order follows inventory's verdict (issue 22): the order API in-process and the order
service's verdict consumer on inventory's topics (private names), fed by a producer writing what
inventory's relay writes."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson import ObjectId

from services.order.lifecycle import CAUSE_CANCEL, CAUSE_PLACE
from services.order.verdicts.main import SERVICE
from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
    Header,
    dlq_topic_for,
    idempotency_key,
)
from shared.dlq.__main__ import DlqSettings, replay, select
from stack import Stack
from tests.integration.order.conftest import Api, order_body
from tests.integration.order.verdict_world import (
    VerdictWorld,
    rejected,
    released,
    reserved,
    verdict_world,
)
from tests.waiting import wait_until

TIMEOUT = 60


@pytest.fixture
async def world(stack: Stack, api: Api) -> AsyncIterator[VerdictWorld]:
    async with verdict_world(stack, api.settings.database) as w:
        w.start()
        yield w


async def _place(api: Api) -> dict[str, Any]:
    response = await api.http.post("/orders", json=order_body())
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


async def _read(api: Api, order_id: str) -> dict[str, Any]:
    response = await api.http.get(f"/orders/{order_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _status_becomes(api: Api, order_id: str, status: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        body = await _read(api, order_id)
        return body if body["status"] == status else None

    found: dict[str, Any] | None = await wait_until(reached, timeout=TIMEOUT, message=status)
    assert found is not None
    return found


def _steps(body: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(h["status"], h["cause"], h["eventId"]) for h in body["history"]]


async def test_stock_reserved_confirms_the_order(api: Api, world: VerdictWorld) -> None:
    order = await _place(api)
    assert order["status"] == "placed"

    event_id = await world.send(reserved(order))

    body = await _status_becomes(api, order["id"], "confirmed")
    assert _steps(body) == [
        ("placed", CAUSE_PLACE, None),
        ("confirmed", EVENT_STOCK_RESERVED, event_id),
    ]
    # A verdict announces nothing: the order's only event is still its creation, version 1.
    assert [e["eventType"] for e in body["events"]] == [EVENT_ORDER_CREATED]
    stored = await api.db.orders.find_one({"_id": ObjectId(order["id"])})
    assert (stored["status"], stored["version"]) == ("confirmed", 1)


async def test_stock_rejected_rejects_the_order_and_its_cancel_is_409_writing_nothing(
    api: Api, world: VerdictWorld
) -> None:
    order = await _place(api)
    event = rejected(order)
    event_id = await world.send(event)
    body = await _status_becomes(api, order["id"], "rejected")
    assert _steps(body)[-1] == ("rejected", EVENT_STOCK_REJECTED, event_id)
    assert body["history"][-1]["note"] == event.reason
    before = await api.db.orders.find_one({"_id": ObjectId(order["id"])})
    counts = await api.counts()

    response = await api.http.post(
        f"/orders/{order['id']}/cancel", headers={"Idempotency-Key": "cancel-rejected"}
    )

    assert response.status_code == 409, response.text
    error = response.json()
    assert error["error"] == "order_not_cancellable"
    assert "rejected" in error["message"]
    assert error["fields"] == [{"field": "status", "message": "rejected", "type": "conflict"}]
    # Nothing written: the same order document (no key, no version, no history), no event.
    assert await api.db.orders.find_one({"_id": ObjectId(order["id"])}) == before
    assert await api.counts() == counts


async def test_a_verdict_after_a_cancel_is_recorded_and_the_order_stays_cancelled(
    api: Api, world: VerdictWorld
) -> None:
    order = await _place(api)
    cancel = await api.http.post(f"/orders/{order['id']}/cancel")
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "cancelled"

    event_id = await world.send(reserved(order))
    await wait_until(
        lambda: world.done(EVENT_STOCK_RESERVED, event_id), timeout=TIMEOUT, message="handled"
    )

    body = await _read(api, order["id"])
    assert body["status"] == "cancelled"
    assert _steps(body) == [
        ("placed", CAUSE_PLACE, None),
        ("cancelled", CAUSE_CANCEL, None),
        ("cancelled", EVENT_STOCK_RESERVED, event_id),
    ]
    assert body["history"][-1]["note"] == "verdict after cancel: reserved"
    # The verdict moved no version and wrote no event: the cancel's are the last.
    stored = await api.db.orders.find_one({"_id": ObjectId(order["id"])})
    assert stored["version"] == 2
    assert [e["eventType"] for e in body["events"]] == [EVENT_ORDER_CREATED, EVENT_ORDER_CANCELLED]


async def test_a_cancel_after_confirmation_and_the_stocks_release_are_in_the_history(
    api: Api, world: VerdictWorld
) -> None:
    order = await _place(api)
    reserved_id = await world.send(reserved(order))
    await _status_becomes(api, order["id"], "confirmed")

    cancel = await api.http.post(f"/orders/{order['id']}/cancel")
    assert (cancel.status_code, cancel.json()["status"]) == (200, "cancelled")
    released_id = await world.send(released(order))
    await wait_until(
        lambda: world.done(EVENT_STOCK_RELEASED, released_id), timeout=TIMEOUT, message="handled"
    )

    body = await _read(api, order["id"])
    assert body["status"] == "cancelled"
    assert _steps(body) == [
        ("placed", CAUSE_PLACE, None),
        ("confirmed", EVENT_STOCK_RESERVED, reserved_id),
        ("cancelled", CAUSE_CANCEL, None),
        ("cancelled", EVENT_STOCK_RELEASED, released_id),
    ]
    assert body["history"][-1]["note"] == "stock released"


async def test_a_replayed_verdict_changes_nothing_even_without_its_dedup_key(
    api: Api, world: VerdictWorld
) -> None:
    order = await _place(api)
    event = reserved(order)
    event_id = await world.send(event)
    await _status_becomes(api, order["id"], "confirmed")
    await wait_until(
        lambda: world.done(EVENT_STOCK_RESERVED, event_id), timeout=TIMEOUT, message="handled"
    )
    before = await api.db.orders.find_one({"_id": ObjectId(order["id"])})

    # A second delivery (Redis says done), then one after Redis lost the key: the order's own
    # history is the backstop.
    await world.send(event, event_id=event_id)
    await world.redis.delete(idempotency_key(SERVICE, EVENT_STOCK_RESERVED, event_id))
    await world.send(event, event_id=event_id)
    await wait_until(
        lambda: world.done(EVENT_STOCK_RESERVED, event_id), timeout=TIMEOUT, message="replayed"
    )
    # A later record on the same key (same partition) shows both replays were consumed.
    last_id = await world.send(released(order))
    await wait_until(
        lambda: world.done(EVENT_STOCK_RELEASED, last_id), timeout=TIMEOUT, message="behind"
    )

    after = await api.db.orders.find_one({"_id": ObjectId(order["id"])})
    assert after["status"] == before["status"] == "confirmed"
    assert after["history"][: len(before["history"])] == before["history"]
    assert [h.get("eventId") for h in after["history"]] == [event_id, last_id]


async def test_malformed_and_unknown_order_verdicts_go_to_the_dlq_with_the_reason(
    api: Api, world: VerdictWorld
) -> None:
    order = await _place(api)
    unknown = reserved({**order, "id": str(ObjectId())})
    bad_id = await world.send(reserved(order), value=b"\x00not json")
    unknown_id = await world.send(unknown)
    good_id = await world.send(reserved(order))

    await _status_becomes(api, order["id"], "confirmed")

    async def dead_lettered() -> dict[str, dict[str, str]] | None:
        records = await world.dlq(EVENT_STOCK_RESERVED)
        by_id = {r.headers.get(Header.IDEMPOTENCY_KEY, ""): r.headers for r in records}
        return by_id if {bad_id, unknown_id} <= set(by_id) else None

    by_id = await wait_until(dead_lettered, timeout=TIMEOUT, message="both in the DLQ")
    assert by_id is not None
    assert "not JSON" in by_id[bad_id][Header.FAILURE_REASON]
    reason = by_id[unknown_id][Header.FAILURE_REASON]
    assert unknown.order_id in reason and "not in database" in reason
    assert by_id[unknown_id][Header.CONSUMER_GROUP] == world.group
    assert good_id not in by_id


async def test_an_order_stored_as_created_is_placed_and_follows_its_verdict(
    api: Api, world: VerdictWorld
) -> None:
    # An order the API stored before the state machine: status "created", no history.
    order = await _place(api)
    await api.db.orders.update_one(
        {"_id": ObjectId(order["id"])}, {"$set": {"status": "created"}, "$unset": {"history": ""}}
    )
    assert (await _read(api, order["id"]))["status"] == "placed"

    event_id = await world.send(reserved(order))

    body = await _status_becomes(api, order["id"], "confirmed")
    assert _steps(body) == [
        ("placed", CAUSE_PLACE, None),
        ("confirmed", EVENT_STOCK_RESERVED, event_id),
    ]


async def test_a_verdict_replayed_from_the_dlq_after_a_cancel_is_recorded_and_changes_nothing(
    api: Api, world: VerdictWorld
) -> None:
    """The verdict failed on Friday and went to the DLQ; the customer cancelled; Monday's
    replay reaches the order: recorded, still cancelled, no event."""
    order = await _place(api)
    event = reserved(order)
    event_id = uuid.uuid4().hex
    await world.dead_letter(event, event_id)
    cancel = await api.http.post(f"/orders/{order['id']}/cancel")
    assert cancel.status_code == 200
    c = world.stack.config
    dlq_topic = dlq_topic_for(world.topics[EVENT_STOCK_RESERVED])
    stored = select(await world.dlq(EVENT_STOCK_RESERVED), group=world.group)
    settings = DlqSettings(
        kafka_bootstrap_servers=c.kafka_bootstrap, redis_url=c.redis_url, topic=dlq_topic
    )

    assert await replay(settings, stored, dry_run=False, out=io.StringIO()) == 1

    await wait_until(
        lambda: world.done(EVENT_STOCK_RESERVED, event_id), timeout=TIMEOUT, message="replayed"
    )
    body = await _read(api, order["id"])
    assert body["status"] == "cancelled"
    assert _steps(body)[1:] == [
        ("cancelled", CAUSE_CANCEL, None),
        ("cancelled", EVENT_STOCK_RESERVED, event_id),
    ]
    assert [e["eventType"] for e in body["events"]] == [EVENT_ORDER_CREATED, EVENT_ORDER_CANCELLED]
