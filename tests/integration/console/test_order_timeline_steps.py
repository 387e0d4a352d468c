"""The console's order timeline read from real servers (MongoDB, Redis, a mailbox directory):
every step of an order's life, from the documents each service writes (inserted here as they
write them), and an order from before the loop, with neither a history nor inventory's outbox,
shown as it was.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from bson import Decimal128, ObjectId

from services.console.settings import ConsoleSettings
from services.console.views import Step, timeline
from services.email.handlers import SERVICE as EMAIL
from services.email.models import (
    CANCELLATION_KIND,
    CONFIRMATION_KIND,
    LEGACY_CONFIRMATION_KIND,
    REJECTION_KIND,
    message_id_for,
)
from shared.contracts import (
    AGGREGATE_ORDER,
    AGGREGATE_RESERVATION,
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
    OutboxStatus,
    order_state_key,
    topic_for_event_type,
)
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION, OutboxField
from shared.redis import make_redis
from stack import Stack

T0 = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class World:
    settings: ConsoleSettings
    mongo: MongoClient
    mailbox: Path

    async def outbox_event(
        self,
        database: str,
        aggregate_type: str,
        order_id: str,
        version: int,
        event_type: str,
        written: float,
        *,
        offset: int | None,
    ) -> str:
        """An outbox document as the relay leaves it: published at ``written + 0.05`` (with its
        Kafka position unless ``offset`` is None), or Pending when ``offset`` is negative."""
        event_id = ObjectId()
        doc: dict[str, Any] = {
            "_id": event_id,
            "aggregateType": aggregate_type,
            "aggregateId": order_id,
            "aggregateVersion": version,
            "eventType": event_type,
            "payload": "{}",
            "status": OutboxStatus.PUBLISHED.value,
            "attempts": 1,
            "createdAt": at(written),
            "publishedAt": at(written + 0.05),
        }
        if offset is not None and offset < 0:
            doc.update(status=OutboxStatus.PENDING.value, attempts=0, publishedAt=None)
        elif offset is not None:
            doc[OutboxField.KAFKA_TOPIC] = topic_for_event_type(event_type)
            doc[OutboxField.KAFKA_PARTITION] = 2
            doc[OutboxField.KAFKA_OFFSET] = offset
        await self.mongo[database][OUTBOX_COLLECTION].insert_one(doc)
        return str(event_id)

    def mail(self, message_id: str, received: float, subject: str) -> None:
        """A message as the SMTP sink stores it (its file name starts with the receive time)."""
        message = EmailMessage()
        message["To"] = "buyer@example.com"
        message["Subject"] = subject
        message["Message-ID"] = message_id
        message.set_content("...")
        stamp = int(at(received).timestamp() * 1e9)
        (self.mailbox / f"{stamp}-{uuid.uuid4().hex[:6]}.eml").write_bytes(message.as_bytes())


@pytest.fixture
async def world(stack: Stack, tmp_path: Path) -> AsyncIterator[World]:
    run = uuid.uuid4().hex[:8]
    c = stack.config
    settings = ConsoleSettings(
        token=secrets.token_urlsafe(32),
        mongo_uri=c.mongo_uri,
        redis_url=c.redis_url,
        kafka_bootstrap_servers=c.kafka_bootstrap,
        orders_database=f"timeline_orders_{run}",
        inventory_database=f"timeline_inventory_{run}",
        smtp_dir=tmp_path,
    )
    mongo = make_mongo_client(c.mongo_uri, 5.0, "console-timeline-tests")
    try:
        yield World(settings, mongo, tmp_path)
    finally:
        await mongo.drop_database(settings.orders_database)
        await mongo.drop_database(settings.inventory_database)
        await mongo.close()


async def _order(world: World, **fields: Any) -> str:
    order_id = ObjectId()
    await world.mongo[world.settings.orders_database]["orders"].insert_one(
        {
            "_id": order_id,
            "userId": "user-1",
            "customerEmail": "buyer@example.com",
            "total": Decimal128(Decimal("9.00")),
            "createdAt": at(0),
            **fields,
        }
    )
    return str(order_id)


async def _set_email_state(world: World, order_id: str, state: str) -> None:
    redis = make_redis(world.settings.redis_url)
    try:
        await redis.set(order_state_key(EMAIL, order_id), state, ex=60)
    finally:
        await redis.aclose()


def _named(steps: list[Step]) -> dict[str, list[Step]]:
    named: dict[str, list[Step]] = {}
    for step in steps:
        named.setdefault(step.what, []).append(step)
    return named


async def test_a_confirmed_then_cancelled_order_shows_every_step_once_in_time_order(
    world: World,
) -> None:
    s = world.settings
    order_id = await _order(world, status="placed")
    created = await world.outbox_event(
        s.orders_database, AGGREGATE_ORDER, order_id, 1, EVENT_ORDER_CREATED, 0, offset=11
    )
    reserved = await world.outbox_event(
        s.inventory_database,
        AGGREGATE_RESERVATION,
        order_id,
        1,
        EVENT_STOCK_RESERVED,
        0.2,
        offset=21,
    )
    cancelled = await world.outbox_event(
        s.orders_database, AGGREGATE_ORDER, order_id, 2, EVENT_ORDER_CANCELLED, 10, offset=12
    )
    released = await world.outbox_event(
        s.inventory_database,
        AGGREGATE_RESERVATION,
        order_id,
        2,
        EVENT_STOCK_RELEASED,
        10.2,
        offset=-1,
    )
    history = [
        {"status": "confirmed", "at": at(0.4), "cause": EVENT_STOCK_RESERVED, "eventId": reserved},
        {"status": "cancelled", "at": at(10), "cause": "POST /orders/{id}/cancel"},
        {
            "status": "cancelled",
            "at": at(10.4),
            "cause": EVENT_STOCK_RELEASED,
            "eventId": released,
            "note": "stock released",
        },
    ]
    await world.mongo[s.orders_database]["orders"].update_one(
        {"_id": ObjectId(order_id)},
        {"$set": {"status": "cancelled", "cancelledAt": at(10), "history": history}},
    )
    world.mail(message_id_for(reserved, CONFIRMATION_KIND), 0.3, f"Order {order_id} confirmed")
    world.mail(message_id_for(cancelled, CANCELLATION_KIND), 10.3, f"Order {order_id} cancelled")

    summary, steps, _ = await timeline(world.mongo, s, order_id)

    assert summary is not None
    assert [e["id"] for e in summary["inventoryEvents"]] == [reserved, released]
    named = _named(steps)
    assert [s.at for s in named["order confirmed"]] == [at(0.4)]
    assert [s.at for s in named["order cancelled"]] == [at(10)]
    assert "stock released" in named["order stays cancelled"][0].detail
    assert [s.at for s in named[f"inventory outbox {EVENT_STOCK_RESERVED} written"]] == [at(0.2)]
    [verdict_published] = named[f"{EVENT_STOCK_RESERVED} published"]
    assert verdict_published.at == at(0.25)
    assert "topic inventory.reserved, partition 2, offset 21" in verdict_published.detail
    assert f"{EVENT_STOCK_RELEASED} not published yet (Pending)" in named
    assert [s.at for s in named["confirmation sent"]] == [at(0.3)]
    assert [s.at for s in named["cancellation notice sent"]] == [at(10.3)]
    assert created in named[f"outbox {EVENT_ORDER_CREATED} written"][0].detail
    timed = [s.at for s in steps if s.at is not None]
    assert timed == sorted(timed)


async def test_a_rejected_order_shows_the_verdict_and_the_notice(world: World) -> None:
    s = world.settings
    order_id = await _order(world, status="rejected")
    await world.outbox_event(
        s.orders_database, AGGREGATE_ORDER, order_id, 1, EVENT_ORDER_CREATED, 0, offset=5
    )
    rejected = await world.outbox_event(
        s.inventory_database,
        AGGREGATE_RESERVATION,
        order_id,
        1,
        EVENT_STOCK_REJECTED,
        0.2,
        offset=6,
    )
    reason = "insufficient stock: SKU-1 (wanted 2, available 0)"
    await world.mongo[s.orders_database]["orders"].update_one(
        {"_id": ObjectId(order_id)},
        {
            "$set": {
                "history": [
                    {
                        "status": "rejected",
                        "at": at(0.4),
                        "cause": EVENT_STOCK_REJECTED,
                        "eventId": rejected,
                        "note": reason,
                    }
                ]
            }
        },
    )
    await _set_email_state(world, order_id, "rejection_sent")

    # The mailbox does not have it yet: the email service's record is a step without a time.
    _, before_mail, _ = await timeline(world.mongo, s, order_id)
    assert [s.at for s in _named(before_mail)["rejection notice sent"]] == [None]

    world.mail(
        message_id_for(rejected, REJECTION_KIND), 0.5, f"Order {order_id} could not be fulfilled"
    )
    summary, steps, _ = await timeline(world.mongo, s, order_id)
    assert summary is not None and summary["emailState"] == "rejection_sent"
    named = _named(steps)
    assert reason in named["order rejected"][0].detail
    assert [s.at for s in named["rejection notice sent"]] == [at(0.5)]
    assert "topic inventory.rejected, partition 2, offset 6" in (
        named[f"{EVENT_STOCK_REJECTED} published"][0].detail
    )
    assert {"confirmation sent", "order cancelled", "order confirmed"}.isdisjoint(named)


async def test_an_order_from_before_the_loop_shows_as_it_did(world: World) -> None:
    """Stored with status ``created``, no ``history`` field, nothing in inventory's outbox (not
    even the collection), confirmed on its OrderCreated under the old Message-ID kind."""
    s = world.settings
    order_id = await _order(world, status="created")
    created = await world.outbox_event(
        s.orders_database, AGGREGATE_ORDER, order_id, 1, EVENT_ORDER_CREATED, 0, offset=None
    )
    world.mail(
        message_id_for(created, LEGACY_CONFIRMATION_KIND), 0.3, f"Order {order_id} confirmed"
    )

    summary, steps, _ = await timeline(world.mongo, s, order_id)

    assert summary is not None
    assert summary["inventoryEvents"] == []
    assert [step.what for step in steps] == [
        "order created",
        f"outbox {EVENT_ORDER_CREATED} written",
        f"{EVENT_ORDER_CREATED} published",
        "confirmation sent",
    ]
