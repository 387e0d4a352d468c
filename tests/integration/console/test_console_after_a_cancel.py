"""The console tells the truth about a quiet system and a cancelled order, in a real browser.

The whole verdict loop runs as processes on the session's stack (order API, relay with Kafka
transactions, inventory, inventory's relay, the order's verdict consumer, email, console), on
the real topics with this module's own databases and consumer groups (positioned at the end of
every topic they read first, so only this module's orders reach them). Five orders, each
confirmed, one of them then cancelled, everything delivered; then:

* the overview shows lag 0 for every group on every topic it reads (CONSOLE_GROUP_TOPICS): a
  caught-up group has nothing left to read, although each Kafka transaction's commit marker
  sits after its last record;
* the cancelled order's timeline lists each step once, at the time it happened: the order
  placed, stock reserved and announced through inventory's outbox, the order confirmed and the
  confirmation, then the cancel: the order cancelled, stock released (announced too) and the
  cancellation notice.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from bson import ObjectId
from playwright.async_api import Page

from services.email.models import CANCELLATION_KIND, CONFIRMATION_KIND, message_id_for
from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
    OutboxStatus,
)
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from stack import Stack
from stack.observe import Inbox
from tests.integration.console.browser import (
    ConsoleWorld,
    chromium_page,
    place_order,
    shot,
    sign_in,
)
from tests.loop_services import TOPICS_READ, Loop
from tests.waiting import WaitTimeout, wait_until

pytestmark = pytest.mark.timeout(300)

ORDERS = 5
# The console's timestamp format (services/console/app.py `_when`): milliseconds, UTC.
SHOWN_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC$")


@dataclass
class World(ConsoleWorld):
    inventory_database: str
    # consumer service -> its group in this module
    groups: dict[str, str]
    mongo: MongoClient
    inbox: Inbox
    page: Page
    order_ids: list[str]
    cancelled_id: str = ""

    @property
    def group_topics(self) -> set[tuple[str, str]]:
        """(group, topic) for every topic each of this module's groups reads."""
        return {
            (group, topic)
            for service, group in self.groups.items()
            for topic in TOPICS_READ[service]
        }

    async def api(self, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            answer = await http.get(path, headers={"Authorization": f"Bearer {self.token}"})
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture(scope="module")
async def world(stack: Stack) -> AsyncIterator[World]:
    run = uuid.uuid4().hex[:8]
    token = secrets.token_urlsafe(32)
    database = f"console_loop_{run}"
    loop = Loop(f"console-loop-{run}", database, f"{database}_inventory")
    envs = loop.envs()
    envs["console"] = {
        "CONSOLE_TOKEN": token,
        "CONSOLE_ORDERS_DATABASE": database,
        "CONSOLE_INVENTORY_DATABASE": loop.inventory_database,
        "CONSOLE_GROUPS": json.dumps(list(loop.groups.values())),
        "CONSOLE_GROUP_TOPICS": json.dumps(loop.group_topics),
    }
    # Other modules' records stay in the topics: the new groups start after them.
    await loop.start_groups_at_the_end(stack.config.kafka_bootstrap)
    mongo = make_mongo_client(stack.config.mongo_uri, 5.0, "console-loop-tests")
    await mongo[loop.inventory_database]["stock"].insert_one(
        {"sku": "SKU-LOOP", "available": 1_000}
    )
    inbox = Inbox(stack.config.smtp_dir)
    inbox.mark_start()
    services = tuple(envs)
    try:
        for name in services:
            stack.start(name, envs[name])
        async with chromium_page() as page:
            url = f"http://127.0.0.1:{stack.port_of('console')}"
            await sign_in(page, url, token)
            yield World(
                stack,
                token,
                url,
                database,
                loop.inventory_database,
                loop.groups,
                mongo,
                inbox,
                page,
                [],
            )
    finally:
        for name in reversed(services):
            # In a thread: a stop waits for the process, and a loop blocked that long makes
            # the client's monitor give the server up and cancel the drops below.
            await asyncio.to_thread(stack.stop, name)
        await mongo.drop_database(database)
        await mongo.drop_database(loop.inventory_database)
        await mongo.close()


def _user(n: int) -> str:
    return f"loop-user-{n}"


async def _place_order(world: World, n: int) -> str:
    return await place_order(
        world,
        user=_user(n),
        email=f"loop-{n}@example.com",
        sku="SKU-LOOP",
        unit_price="4.50",
    )


async def _event_ids(world: World, database: str | None = None) -> dict[tuple[str, str], str]:
    """(order id, event type) -> outbox event id, for this module's orders, in the outbox of
    ``database`` (the order API's by default; inventory's holds its verdicts)."""
    outbox = world.mongo[database or world.database][OUTBOX_COLLECTION]
    return {
        (str(doc["aggregateId"]), str(doc["eventType"])): str(doc["_id"])
        async for doc in outbox.find({}, {"aggregateId": 1, "eventType": 1})
    }


async def _confirmation_sent(world: World, order_id: str) -> bool:
    """The order's confirmation, sent on inventory's StockReserved, is in the mailbox."""
    verdicts = await _event_ids(world, world.inventory_database)
    event = verdicts.get((order_id, EVENT_STOCK_RESERVED))
    return event is not None and message_id_for(event) in {m.message_id for m in world.inbox.scan()}


async def _statuses(world: World) -> dict[str, str]:
    orders = world.mongo[world.database]["orders"]
    return {str(doc["_id"]): doc["status"] async for doc in orders.find({}, {"status": 1})}


async def _everything_delivered(world: World) -> bool:
    for database in (world.database, world.inventory_database):
        outbox = world.mongo[database][OUTBOX_COLLECTION]
        if await outbox.count_documents({"status": {"$ne": OutboxStatus.PUBLISHED.value}}):
            return False
    reservations = {
        doc["orderId"]: doc
        async for doc in world.mongo[world.inventory_database]["reservations"].find({})
    }
    if set(reservations) != set(world.order_ids):
        return False
    if "cancelledAt" not in reservations[world.cancelled_id]:
        return False
    verdicts = await _event_ids(world, world.inventory_database)
    if (world.cancelled_id, EVENT_STOCK_RELEASED) not in verdicts:
        return False
    expected_statuses = {o: "confirmed" for o in world.order_ids} | {
        world.cancelled_id: "cancelled"
    }
    if await _statuses(world) != expected_statuses:
        return False
    # The release reached the order too (recorded in its history, the status unchanged).
    released = verdicts[(world.cancelled_id, EVENT_STOCK_RELEASED)]
    cancelled = await world.mongo[world.database]["orders"].find_one(
        {"_id": ObjectId(world.cancelled_id), "history.eventId": released}
    )
    if cancelled is None:
        return False
    events = await _event_ids(world)
    expected = {message_id_for(verdicts[(o, EVENT_STOCK_RESERVED)]) for o in world.order_ids}
    expected.add(
        message_id_for(events[(world.cancelled_id, EVENT_ORDER_CANCELLED)], CANCELLATION_KIND)
    )
    return expected <= {mail.message_id for mail in world.inbox.scan()}


async def test_an_idle_caught_up_stack_shows_no_lag(world: World) -> None:
    world.order_ids = [await _place_order(world, n) for n in range(ORDERS)]
    world.cancelled_id = world.order_ids[1]  # loop-user-1's
    # Cancelled once its confirmation left (on inventory's verdict), so both emails are due
    # (had the email service seen the cancel first, it would rightly have sent no confirmation).
    await wait_until(
        lambda: _confirmation_sent(world, world.cancelled_id),
        timeout=60,
        interval=0.3,
        message="the confirmation of the order to cancel",
    )
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"{world.order_url}/orders/{world.cancelled_id}/cancel",
            headers=world.customer(_user(1)),
        )
    assert answer.status_code == 200, answer.text
    await wait_until(
        lambda: _everything_delivered(world),
        timeout=60,
        interval=0.5,
        message="reservations, verdicts, the release, every order's status and every email",
    )

    # Delivered; the groups commit right after their work. From then on nothing is pending.
    lag: list[Any] = []

    async def no_lag_shown() -> bool:
        lag[:] = (await world.api("/api/overview"))["lag"]
        return bool(lag) and all(row["total"] == 0 for row in lag)

    try:
        await wait_until(no_lag_shown, timeout=30, interval=0.5, message="lag 0 everywhere")
    except WaitTimeout:
        pytest.fail(f"an idle, caught-up stack shows lag: {lag}")
    # Each group on every topic it reads (inventory's topics included), each partition 0;
    # none on a topic it does not read (its "lag" there would be every record).
    assert {(row["group"], row["topic"]) for row in lag} == world.group_topics
    assert len(lag) == len(world.group_topics), lag
    assert all(set(row["partitions"].values()) == {0} for row in lag), lag

    await world.page.goto(world.url + "/")
    rows = world.page.locator("#lag tr[data-group]")
    assert await rows.count() == len(world.group_topics)
    for i in range(await rows.count()):
        total = rows.nth(i).locator("td.total")
        assert await total.inner_text() == "0"
        assert "bad" not in (await total.get_attribute("class") or "")
    await shot(world.page, "overview-idle")

    # The consumers' own lag metric (what ConsumerLagGrowing watches) agrees, topic by topic.
    for service in world.groups:
        async with httpx.AsyncClient(timeout=10) as http:
            metrics = (
                await http.get(f"http://127.0.0.1:{world.stack.port_of(service)}/metrics")
            ).text
        series = re.findall(r"^consumer_lag\{([^}]*)\} (\S+)$", metrics, re.MULTILINE)
        topics = {re.search(r'topic="([^"]*)"', labels).group(1) for labels, _ in series}  # type: ignore[union-attr]
        assert topics == set(TOPICS_READ[service]), series
        assert {float(value) for _, value in series} == {0.0}, series


def _rows(table: list[list[str]], step: str) -> list[list[str]]:
    return [row for row in table if row[1] == step]


def _one(table: list[list[str]], step: str) -> list[str]:
    rows = _rows(table, step)
    assert len(rows) == 1, f"{step!r} shown {len(rows)} times in {table}"
    return rows[0]


def _shown(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


async def test_a_cancelled_orders_timeline_shows_each_step_once_at_its_own_time(
    world: World,
) -> None:
    order_id = world.cancelled_id
    assert order_id, "runs after the test that places and cancels the orders"
    reservation = await world.mongo[world.inventory_database]["reservations"].find_one(
        {"orderId": order_id}
    )
    assert reservation is not None
    order = await world.mongo[world.database]["orders"].find_one({"_id": ObjectId(order_id)})
    assert order is not None
    events = await _event_ids(world)
    cancel_event = events[(order_id, EVENT_ORDER_CANCELLED)]
    verdicts = await _event_ids(world, world.inventory_database)
    reserved_event = verdicts[(order_id, EVENT_STOCK_RESERVED)]
    released_event = verdicts[(order_id, EVENT_STOCK_RELEASED)]
    history = {entry.get("eventId"): entry for entry in order["history"]}

    await world.page.goto(world.url + f"/orders/{order_id}")
    table = [
        [cell.strip() for cell in await row.locator("td").all_inner_texts()]
        for row in await world.page.locator("#timeline tr:has(td)").all()
    ]
    await shot(world.page, "order-timeline-cancelled")
    assert all(SHOWN_TIME.match(row[0]) for row in table), table

    # The order: placed, confirmed by inventory's verdict, cancelled at its own cancelledAt;
    # the release that followed is recorded without changing it.
    placed = _one(table, "order created")
    assert placed[0] == _shown(_utc(order["createdAt"]))
    confirmed = _one(table, "order confirmed")
    assert confirmed[0] == _shown(_utc(history[reserved_event]["at"]))
    assert f"by {EVENT_STOCK_RESERVED}, event {reserved_event}" in confirmed[2]
    cancelled = _one(table, "order cancelled")
    assert cancelled[0] == _shown(_utc(order["cancelledAt"]))
    stays = _one(table, "order stays cancelled")
    assert f"by {EVENT_STOCK_RELEASED}, event {released_event}" in stays[2]
    # Inventory: reserved when the creation arrived, released when the cancel arrived; each
    # verdict written to its outbox in that transaction, then published by its relay.
    reserved = _one(table, "stock reserved")
    assert reserved[0] == _shown(_utc(reservation["createdAt"]))
    released = _one(table, "stock released")
    assert released[0] == _shown(_utc(reservation["cancelledAt"]))
    assert not _rows(table, "stock cancelled"), table  # a status is not a step
    for kind, event_id in (
        (EVENT_STOCK_RESERVED, reserved_event),
        (EVENT_STOCK_RELEASED, released_event),
    ):
        written = _one(table, f"inventory outbox {kind} written")
        assert f"event {event_id}" in written[2]
        published = _one(table, f"{kind} published")
        assert table.index(written) < table.index(published)
    # Email: the confirmation (on the verdict) and the notice went out, each shown once, with
    # its own Message-ID.
    confirmation = _one(table, "confirmation sent")
    assert message_id_for(reserved_event, CONFIRMATION_KIND) in confirmation[2]
    notice = _one(table, "cancellation notice sent")
    assert message_id_for(cancel_event, CANCELLATION_KIND) in notice[2]
    assert not _rows(table, "email sent"), table
    # What the email service itself recorded: the notice left (its state keeps the last send).
    assert await world.page.inner_text("#email-state") == "cancellation_sent"
    # In time order, each at its own moment.
    times = [row[0] for row in table]
    assert times == sorted(times), table
    assert table.index(placed) < table.index(reserved) < table.index(confirmed)
    assert table.index(confirmed) < table.index(cancelled) < table.index(released)
    assert table.index(released) <= table.index(stays)
    assert table.index(confirmation) < table.index(notice)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def test_an_order_looked_up_in_upper_case_shows_the_same_history(world: World) -> None:
    # ObjectId hex is case-insensitive: the console finds the order either way, and must then
    # look up its events, reservation and mail under the stored (lower-case) id, not the text.
    order_id = world.cancelled_id
    assert order_id, "runs after the test that places and cancels the orders"
    as_stored = await world.api(f"/api/orders/{order_id}")
    as_typed = await world.api(f"/api/orders/{order_id.upper()}")
    assert as_typed == as_stored
    assert len(as_typed["order"]["events"]) == 2, as_typed
