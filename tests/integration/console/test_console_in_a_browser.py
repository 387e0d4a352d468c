"""The operator console in a real browser (Playwright driving Debian's chromium) against the
embedded stack, with the order API, relay, inventory consumer and console as processes.

One world for the module (starting four processes is the expensive part); the tests run in
file order and each one builds on the state the previous left: a backlog, then a Failed event,
then a poison record. A screenshot of each page is kept in .stack/test-artifacts/console/.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from bson import ObjectId
from playwright.async_api import Page
from redis.asyncio import Redis

from shared.contracts import Header, OutboxStatus, dlq_topic_for
from shared.dlq import StoredDlqRecord, read_dlq
from shared.idempotency import DONE
from shared.kafka import decode_headers, encode_headers, ensure_topics, make_producer
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION, OutboxField
from shared.redis import make_redis
from shared.settings import RelaySlotsSetting
from stack import Stack
from tests.integration.console.browser import (
    ConsoleWorld,
    chromium_page,
    place_order,
    shot,
    sign_in,
)
from tests.waiting import wait_until

SCRIPT_VALUE = b'{"note": "<script>window.__pwned = 1; alert(1)</script>"}'
HTML_HEADER = '<img src=x onerror="window.__pwned = 2">'
LEAKY_ERROR = "KafkaTimeoutError: <b>no broker</b> at mongodb://admin:s3cret-pass@db:27017/"

pytestmark = pytest.mark.timeout(240)


@dataclass
class World(ConsoleWorld):
    topic: str
    cancelled_topic: str
    mongo: MongoClient
    redis: Redis
    producer: AIOKafkaProducer
    page: Page
    env: dict[str, str]

    async def shot(self, name: str) -> None:
        await shot(self.page, name)

    async def pwned(self) -> object:
        return await self.page.evaluate("() => window.__pwned")


@pytest.fixture(scope="module")
async def world(stack: Stack) -> AsyncIterator[World]:
    run = uuid.uuid4().hex[:8]
    token = secrets.token_urlsafe(32)
    database = f"console_it_{run}"
    topic = f"console.it.{run}"
    cancelled_topic = f"console.it.{run}.cancelled"
    group = f"console-it-inventory-{run}"
    topics = [topic, cancelled_topic]
    await ensure_topics(stack.config.kafka_bootstrap, [*topics, *map(dlq_topic_for, topics)])
    env = {
        "ORDER_DATABASE": database,
        "RELAY_DATABASE": database,
        "RELAY_TRANSACTIONAL_ID": f"console-it-{run}",
        "INVENTORY_TOPIC": topic,
        "INVENTORY_CANCELLED_TOPIC": cancelled_topic,
        "INVENTORY_GROUP_ID": group,
        "INVENTORY_DATABASE": f"{database}_inventory",
        "CONSOLE_TOKEN": token,
        "CONSOLE_ORDERS_DATABASE": database,
        "CONSOLE_INVENTORY_DATABASE": f"{database}_inventory",
        # This module's private pair of order topics stands in for shared/contracts.py's.
        "CONSOLE_TOPICS": json.dumps(topics),
        "CONSOLE_GROUPS": f'["{group}"]',
        "CONSOLE_SAMPLE_SECONDS": "1",
    }
    # The relay is not started yet: the first test needs a backlog.
    for name in ("order", "inventory", "console"):
        stack.start(name, env)
    mongo = make_mongo_client(stack.config.mongo_uri, 5.0, "console-tests")
    redis = make_redis(stack.config.redis_url)
    producer = make_producer(stack.config.kafka_bootstrap)
    await producer.start()
    try:
        async with chromium_page() as page:
            yield World(
                stack,
                token,
                f"http://127.0.0.1:{stack.port_of('console')}",
                database,
                topic,
                cancelled_topic,
                mongo,
                redis,
                producer,
                page,
                env,
            )
    finally:
        await producer.stop()
        await redis.aclose()
        for name in ("console", "relay", "inventory", "order"):
            stack.stop(name)
        await mongo.drop_database(database)
        await mongo.drop_database(f"{database}_inventory")
        await mongo.close()


async def _place_order(world: World, n: int) -> str:
    return await place_order(
        world,
        user=f"console-user-{n}",
        email="ops@example.com",
        sku="SKU-CONSOLE",
        unit_price="3.00",
    )


async def test_requests_without_the_token_are_refused(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.url, timeout=10) as http:
        api = await http.get("/api/overview")
        assert api.status_code == 401
        assert api.headers["www-authenticate"] == "Bearer"
        wrong = await http.get("/api/overview", headers={"Authorization": "Bearer " + "x" * 43})
        assert wrong.status_code == 401
        html = await http.get("/dlq", headers={"Accept": "text/html"})
        assert html.status_code == 303
        assert html.headers["location"] == "/login?next=/dlq"
        # An action without a session is refused before anything happens.
        post = await http.post("/outbox/retry", data={"all": "1"})
        assert post.status_code == 401
        ok = await http.get("/api/overview", headers={"Authorization": f"Bearer {world.token}"})
        assert ok.status_code == 200, ok.text

    # The browser lands on the sign-in form; a wrong token keeps it there.
    await world.page.goto(world.url + "/outbox")
    assert world.page.url.endswith("/login?next=/outbox")
    await world.page.fill("input[name=token]", "not-the-token")
    await world.page.click("button[type=submit]")
    assert "wrong token" in await world.page.content()
    await world.shot("login")


async def test_overview_shows_a_backlog_made_on_purpose(world: World) -> None:
    # No relay runs: three orders stay Pending.
    for n in range(3):
        await _place_order(world, n)
    await sign_in(world.page, world.url, world.token)
    cookies = await world.page.context.cookies()
    session = next(c for c in cookies if c["name"] == "console_session")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"

    async def backlog_shown() -> bool:
        await world.page.reload()
        pending = await world.page.inner_text("#pending-count")
        return int(pending) >= 3 and await world.page.inner_text("#oldest-pending") != "0:00:00"

    await wait_until(backlog_shown, timeout=20, interval=0.5, message="the backlog on the page")
    assert "none" in await world.page.inner_text("#leader")  # no relay holds a slot
    slots = world.page.locator("#slots tr[data-slot]")
    assert await slots.count() == RelaySlotsSetting().relay_slots
    assert await world.page.locator("#slots span.ok").count() == 0  # every slot without owner
    await world.shot("overview-backlog")


async def test_a_failed_event_retried_with_the_button_becomes_published(world: World) -> None:
    order_id = await _place_order(world, 99)
    outbox = world.mongo[world.database][OUTBOX_COLLECTION]
    event = await outbox.find_one({"aggregateId": order_id})
    assert event is not None
    # What the relay does after RELAY_MAX_ATTEMPTS, with an error text that holds a password.
    await outbox.update_one(
        {"_id": event["_id"]},
        {"$set": {"status": OutboxStatus.FAILED.value, "attempts": 5, "lastError": LEAKY_ERROR}},
    )
    world.stack.start("relay", world.env)

    await world.page.goto(world.url + "/outbox")
    row = world.page.locator(f"tr[data-event='{event['_id']}']")
    text = await row.inner_text()
    assert "<b>no broker</b>" in text  # shown as text, not as markup
    assert "s3cret-pass" not in await world.page.content()  # the URI's password is masked
    await world.shot("outbox-failed")
    # The backlog drains; the Failed event stays Failed until somebody retries it.
    await wait_until(
        lambda: _no_pending(outbox), timeout=30, interval=0.2, message="the backlog drained"
    )
    still = await outbox.find_one({"_id": event["_id"]})
    assert still is not None
    assert still["status"] == OutboxStatus.FAILED.value

    await row.locator("button", has_text="Retry").click()
    assert "put back to Pending" in await world.page.inner_text("#flash")

    async def published() -> bool:
        doc = await outbox.find_one({"_id": ObjectId(str(event["_id"]))})
        return doc is not None and doc["status"] == OutboxStatus.PUBLISHED.value

    await wait_until(published, timeout=30, interval=0.2, message="the retried event published")
    await world.page.goto(world.url + "/outbox")
    assert await world.page.locator(f"tr[data-event='{event['_id']}']").count() == 0


async def _no_pending(outbox: Any) -> bool:
    pending: int = await outbox.count_documents({"status": OutboxStatus.PENDING.value})
    return pending == 0


async def _dead_letter(
    world: World, key: bytes, topic: str | None = None, replayed_from: str | None = None
) -> StoredDlqRecord:
    """The DLQ record of ``key`` from ``topic`` (the created topic by default); with
    ``replayed_from``, the one a replayed copy of that DLQ record ended in."""
    dlq = dlq_topic_for(topic or world.topic)

    async def arrived() -> StoredDlqRecord | None:
        records = await read_dlq(world.stack.config.kafka_bootstrap, dlq)
        return next(
            (
                r
                for r in records
                if r.key == key and r.headers.get(Header.REPLAYED_FROM) == replayed_from
            ),
            None,
        )

    found: StoredDlqRecord | None = await wait_until(
        arrived, timeout=60, interval=0.5, message="the poison record's DLQ entry"
    )
    assert found is not None
    return found


async def test_a_poison_record_is_previewed_and_replayed_from_the_page_without_running_its_script(
    world: World,
) -> None:
    key = f"poison-{uuid.uuid4().hex[:8]}".encode()
    headers = encode_headers({"idempotencyKey": uuid.uuid4().hex, "note": HTML_HEADER})
    await world.producer.send_and_wait(world.topic, key=key, value=SCRIPT_VALUE, headers=headers)
    record = await _dead_letter(world, key)

    await world.page.goto(world.url + "/dlq")
    row = world.page.locator(_row_of(record))
    assert SCRIPT_VALUE.decode() in await row.locator("pre.value").inner_text()
    await row.locator("summary").click()
    assert HTML_HEADER in await row.inner_text()
    assert await world.pwned() is None
    # Grouped by cause: the exception type of the poison parse is the group's heading.
    cause = await world.page.locator("section.dlq-group", has=row).locator("pre.cause").inner_text()
    assert cause.startswith("PoisonMessage")
    await world.shot("dlq")

    await row.locator("button", has_text="Preview replay").click()
    output = await world.page.inner_text("#replay-output")
    assert f"would replay {record.ref} -> {world.topic}" in output
    assert await world.redis.exists(record.ledger_key()) == 0  # a preview sends nothing
    await world.shot("dlq-replay-preview")

    await world.page.click("#replay-confirm")
    assert f"replayed {record.ref} -> {world.topic}" in await world.page.inner_text(
        "#replay-output"
    )
    assert await world.redis.get(record.ledger_key()) == DONE  # the CLI's ledger, marked done
    # The same ledger as the CLI: a second replay of the record sends nothing.
    await world.page.goto(world.url + "/dlq")
    await world.page.locator(_row_of(record)).locator("button", has_text="Preview replay").click()
    assert f"already replayed {record.ref}" in await world.page.inner_text("#replay-output")
    assert await world.pwned() is None


def _row_of(record: StoredDlqRecord) -> str:
    return f"tr[data-topic='{record.topic}'][data-ref='{record.ref}']"


async def test_a_poisoned_cancellation_is_listed_and_replayed_from_the_page(world: World) -> None:
    # A cancel nobody can parse, on the cancellation topic: inventory dead-letters it to that
    # topic's own DLQ, which the console must list and replay like the creation topic's.
    key = f"poison-cancel-{uuid.uuid4().hex[:8]}".encode()
    headers = encode_headers({Header.IDEMPOTENCY_KEY: uuid.uuid4().hex})
    await world.producer.send_and_wait(
        world.cancelled_topic, key=key, value=b"{not json", headers=headers
    )
    record = await _dead_letter(world, key, world.cancelled_topic)
    assert record.topic == dlq_topic_for(world.cancelled_topic)

    await world.page.goto(world.url + "/dlq")
    assert key.decode() in await world.page.inner_text("main"), "the cancellation DLQ is listed"
    row = world.page.locator(_row_of(record))
    assert await row.count() == 1
    section = world.page.locator("section.dlq-group", has=row)
    assert record.topic in await section.locator("h2").inner_text()
    await world.shot("dlq-cancellation")

    await row.locator("button", has_text="Preview replay").click()
    assert f"would replay {record.ref} -> {world.cancelled_topic}" in await world.page.inner_text(
        "#replay-output"
    )
    await world.page.click("#replay-confirm")
    output = await world.page.inner_text("#replay-output")
    assert f"replayed {record.ref} -> {world.cancelled_topic}" in output
    assert await world.redis.get(record.ledger_key()) == DONE
    # The copy reached inventory on the cancellation topic (still poison: back in its DLQ,
    # now naming the record it was replayed from).
    again = await _dead_letter(world, key, world.cancelled_topic, replayed_from=record.ref)
    assert again.offset > record.offset or again.partition != record.partition
    await world.page.goto(world.url + "/")
    counts = await world.page.inner_text("#dlq-counts")
    assert record.topic in counts


async def test_the_overview_shows_every_slot_owned_by_the_running_relay(world: World) -> None:
    # The relay started by the previous test runs alone: it takes every slot.
    slot_count = RelaySlotsSetting().relay_slots

    async def all_owned() -> bool:
        await world.page.goto(world.url + "/")
        return await world.page.locator("#slots span.ok").count() == slot_count

    await wait_until(all_owned, timeout=60, interval=0.5, message="every slot owned")
    assert f"{slot_count} slot(s)" in await world.page.inner_text("#leader")
    async with httpx.AsyncClient(base_url=world.url, timeout=10) as http:
        answer = await http.get("/api/overview", headers={"Authorization": f"Bearer {world.token}"})
    slots = answer.json()["slots"]
    assert [s["slot"] for s in slots] == list(range(slot_count))
    assert all(s["held"] for s in slots)
    await world.shot("overview-slots")


async def test_an_order_timeline_lists_each_step(world: World) -> None:
    order_id = await _place_order(world, 7)
    outbox = world.mongo[world.database][OUTBOX_COLLECTION]

    async def published() -> bool:
        doc = await outbox.find_one({"aggregateId": order_id})
        return doc is not None and doc["status"] == OutboxStatus.PUBLISHED.value

    await wait_until(published, timeout=30, interval=0.2, message="the order's event published")
    event = await outbox.find_one({"aggregateId": order_id})
    assert event is not None
    f = OutboxField
    topic, partition, offset = event[f.KAFKA_TOPIC], event[f.KAFKA_PARTITION], event[f.KAFKA_OFFSET]
    # The position the relay recorded is the record's: the event is really there in Kafka.
    assert await _idempotency_key_at(world, topic, partition, offset) == str(event["_id"])

    await world.page.goto(world.url + f"/orders/{order_id}")
    steps = await world.page.inner_text("#timeline")
    assert "order created" in steps
    assert f"topic {topic}, partition {partition}, offset {offset}" in steps
    async with httpx.AsyncClient(base_url=world.url, timeout=10) as http:
        answer = await http.get(
            f"/api/orders/{order_id}", headers={"Authorization": f"Bearer {world.token}"}
        )
    assert answer.status_code == 200, answer.text
    [shown] = answer.json()["order"]["events"]
    assert shown["kafka"] == {"topic": topic, "partition": partition, "offset": offset}
    await world.shot("order-timeline")


async def _idempotency_key_at(world: World, topic: str, partition: int, offset: int) -> str:
    """The idempotencyKey header of the committed record at (topic, partition, offset)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=world.stack.config.kafka_bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert record.offset == offset
    return decode_headers(record.headers)[Header.IDEMPOTENCY_KEY]


async def test_a_form_post_without_its_csrf_token_is_refused(world: World) -> None:
    cookies = await world.page.context.cookies()
    session = next(c["value"] for c in cookies if c["name"] == "console_session")
    async with httpx.AsyncClient(base_url=world.url, timeout=10) as http:
        forged = await http.post(
            "/outbox/retry", data={"all": "1"}, cookies={"console_session": session}
        )
    assert forged.status_code == 403
    assert "CSRF" in forged.text
