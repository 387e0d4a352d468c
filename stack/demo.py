"""`make demo`: orders travel through the whole system, with one fault survived on the way.

Embedded mode (default) starts the embedded stack and the services on free ports under
``.stack/demo`` (so it never collides with a running ``make up``), seeds the demo catalogue,
then shows each order travel the loop, both outboxes included, step by step:

1. orders confirmed: order written (``placed``) -> ``OrderCreated`` published to
   ``order.created`` -> stock reserved by inventory -> its ``StockReserved`` published to
   ``inventory.reserved`` -> the order ``confirmed`` -> confirmation email received;
2. an order rejected for lack of stock (more ``SKU-LIMITED`` than the catalogue holds): the
   same steps, with ``stock rejected`` and its reason, ``StockRejected`` on
   ``inventory.rejected``, the order ``rejected`` and the rejection notice;
3. the first confirmed order cancelled: order ``cancelled`` -> ``OrderCancelled`` published to
   ``order.cancelled`` -> stock released -> ``StockReleased`` published to
   ``inventory.released`` -> the release in the order's history -> cancellation notice;
4. stops the Kafka broker, creates more orders while it is down (the API does not care), starts
   the broker again and shows those orders confirmed too;
5. produces a poison message straight into ``order.created`` and shows it land in
   ``order.created.dlq`` with its reason (inventory is that topic's consumer).

It prints a summary table, stops the stack, and exits 0 only if every order completed and the
poison message was dead-lettered. ``--external`` runs the same scenario against services that
are already running (``docker compose up demo``): no stack is started and the broker restart is
skipped, because a container cannot restart its siblings.

Every request carries its customer's bearer token, taken before the first order: from the
stack's development issuer for ``demo-user-1``, ``demo-user-2`` ... (embedded), from Keycloak
by the password grant for its demo users alice and bob (``--external``, ``--keycloak-url``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
    INVENTORY_GROUP,
    ORDER_CREATED_DLQ_TOPIC,
    ORDER_CREATED_TOPIC,
    Header,
    topic_for_event_type,
)
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from stack import keycloak
from stack.config import INFRA, REPO_ROOT, SERVICES, StackConfig
from stack.issuer import UserTokens, bearer_header, token_subject
from stack.observe import Inbox as MailInbox
from stack.observe import topic_partitions
from stack.supervisor import Stack

CATALOGUE = REPO_ROOT / "services" / "inventory" / "demo_catalogue.json"
# The catalogue's SKU in short supply, and an order for one more than it ever holds: inventory
# rejects it on every run (stock only goes down between runs of a compose stack).
LIMITED_SKU = "SKU-LIMITED"
LIMITED_WANTED = 6
# The steps every row travels: the order's change written by the API, its event published from
# the order's outbox, inventory's change to the stock, inventory's event published from its own
# outbox, the order following that event, the customer's email.
STAGES = ("written", "published", "stock", "announced", "order", "emailed")
# Generous: the first round trip also pays for consumer-group joins on a two-core machine.
SETTLE_SECONDS = 90.0
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Journey:
    """One way through the loop: what each step must show for it."""

    name: str  # the order's status at the end
    trigger: str  # the order's event that starts it (its outbox)
    stock: str  # the reservation's status inventory writes
    verdict: str  # inventory's event (its outbox)
    mail: str  # the email the customer gets

    @property
    def mail_answers_verdict(self) -> bool:
        """The mail names inventory's event (the verdicts), not the order's (the cancel)."""
        return self.trigger == EVENT_ORDER_CREATED


CONFIRMED = Journey(
    "confirmed", EVENT_ORDER_CREATED, "reserved", EVENT_STOCK_RESERVED, "confirmation"
)
REJECTED = Journey(
    "rejected", EVENT_ORDER_CREATED, "rejected", EVENT_STOCK_REJECTED, "rejection notice"
)
CANCELLED = Journey(
    "cancelled", EVENT_ORDER_CANCELLED, "cancelled", EVENT_STOCK_RELEASED, "cancellation notice"
)


@dataclass
class Tracked:
    order_id: str
    total: Decimal
    note: str
    started: float
    reached: dict[str, float] = field(default_factory=dict)
    # The order's event this row follows (creation or cancellation), and inventory's answer.
    event_id: str | None = None
    verdict_id: str | None = None
    path: Journey = CONFIRMED
    # The customer who placed the order: only their token reads or cancels it.
    user: str = ""

    @property
    def cancellation(self) -> bool:
        return self.path is CANCELLED

    @property
    def complete(self) -> bool:
        return all(stage in self.reached for stage in STAGES)


@dataclass(frozen=True)
class Endpoints:
    order_url: str
    mongo_uri: str
    kafka: str
    smtp_dir: Path | None = None
    mailpit_url: str | None = None


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class Customers:
    """Who places the demo's orders, in turn, and each one's bearer token (taken up front),
    keyed by the token's subject: the user id an order of theirs carries."""

    tokens: dict[str, str]

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ValueError("the demo needs at least one customer")

    def user_for(self, n: int) -> str:
        """The customer of order ``n`` (1-based)."""
        users = list(self.tokens)
        return users[(n - 1) % len(users)]

    def headers(self, user: str) -> dict[str, str]:
        return bearer_header(self.tokens[user])

    @classmethod
    def of_stack(cls, config: StackConfig, orders: int) -> Customers:
        """``demo-user-1`` ... ``demo-user-<orders>``, tokens from the stack's issuer."""
        issuer = UserTokens.for_stack(config)
        return cls({user: issuer.token(user) for user in _demo_users(orders)})

    @classmethod
    def of_keycloak(cls, realm_url: str) -> Customers:
        """The realm's demo users, tokens by the password grant from ``realm_url`` (the realm
        as this process reaches it; the tokens name the issuer Keycloak is configured with)."""
        tokens = [keycloak.password_grant(realm_url, user) for user in keycloak.demo_users()]
        return cls({token_subject(token): token for token in tokens})


def _demo_users(orders: int) -> list[str]:
    return [f"demo-user-{n}" for n in range(1, orders + 1)]


def _sample_order(n: int, user: str, path: Journey = CONFIRMED) -> dict[str, Any]:
    # userId, where sent, must be the token's subject: the order's owner is whom the token names.
    items: list[dict[str, Any]] = [
        {"sku": f"SKU-{1 + n % 5}", "quantity": 1 + n % 3, "unitPrice": "19.99"},
        {"sku": "SKU-5", "quantity": 2, "unitPrice": "4.50"},
    ]
    if path is REJECTED:
        items.append({"sku": LIMITED_SKU, "quantity": LIMITED_WANTED, "unitPrice": "99.00"})
    return {"userId": user, "customerEmail": f"customer{n}@example.com", "items": items}


class Inbox:
    """Message-IDs of the emails received so far: .eml files of the sink, or Mailpit's API."""

    def __init__(self, endpoints: Endpoints, http: httpx.AsyncClient) -> None:
        self._endpoints = endpoints
        self._http = http
        self._sink = MailInbox(endpoints.smtp_dir) if endpoints.smtp_dir else None

    async def message_ids(self) -> set[str]:
        if self._endpoints.mailpit_url:
            reply = await self._http.get(
                f"{self._endpoints.mailpit_url}/api/v1/messages", params={"limit": 1000}
            )
            reply.raise_for_status()
            return {m.get("MessageID", "") for m in reply.json().get("messages", [])}
        return {mail.message_id for mail in self._sink.scan()} if self._sink else set()


class Demo:
    def __init__(self, endpoints: Endpoints, orders_per_phase: int, customers: Customers) -> None:
        self.endpoints = endpoints
        self.orders_per_phase = orders_per_phase
        self.customers = customers
        self.tracked: list[Tracked] = []
        self._placed = 0  # orders placed so far: order k is the k-th customer's (in turn)
        self._t0 = time.monotonic()
        self._http = httpx.AsyncClient(timeout=10.0)
        self._mongo: MongoClient = make_mongo_client(endpoints.mongo_uri, 5.0, "demo")
        self._inbox = Inbox(endpoints, self._http)

    async def close(self) -> None:
        await self._http.aclose()
        await self._mongo.close()

    def _clock(self) -> str:
        return f"[{time.monotonic() - self._t0:6.1f}s]"

    async def create_orders(
        self, count: int, note: str, path: Journey = CONFIRMED
    ) -> list[Tracked]:
        """Place ``count`` orders that should take ``path`` (confirmed, or rejected: each asks
        for more of the limited SKU than there is)."""
        created = []
        for _ in range(count):
            n = len(self.tracked) + 1
            self._placed += 1
            user = self.customers.user_for(self._placed)
            started = time.monotonic()
            reply = await self._http.post(
                f"{self.endpoints.order_url}/orders",
                json=_sample_order(n, user, path),
                headers=self.customers.headers(user),
            )
            if reply.status_code != 201:
                raise RuntimeError(f"POST /orders answered {reply.status_code}: {reply.text}")
            body = reply.json()
            order = Tracked(body["id"], Decimal(body["total"]), note, started, path=path, user=user)
            order.reached["written"] = time.monotonic()
            self.tracked.append(order)
            created.append(order)
            _say(
                f"{self._clock()} order {order.order_id} written, {body.get('status')} "
                f"(total {order.total}, {note})"
            )
        return created

    async def cancel(self, order: Tracked) -> Tracked:
        """Cancel ``order`` over HTTP; the returned row follows its OrderCancelled event."""
        started = time.monotonic()
        reply = await self._http.post(
            f"{self.endpoints.order_url}/orders/{order.order_id}/cancel",
            headers=self.customers.headers(order.user),
        )
        if reply.status_code != 200 or reply.json().get("status") != "cancelled":
            raise RuntimeError(
                f"POST /orders/.../cancel answered {reply.status_code}: {reply.text}"
            )
        row = Tracked(
            order.order_id, order.total, "cancellation", started, path=CANCELLED, user=order.user
        )
        row.reached["written"] = time.monotonic()
        self.tracked.append(row)
        _say(f"{self._clock()} order {order.order_id} cancelled (its OrderCancelled event written)")
        return row

    async def _advance(self, order: Tracked, inbox: set[str]) -> None:
        """Record (and print, in the order of STAGES) every step ``order`` reached since the
        last poll. The order's consumer and email answer inventory's event side by side, so
        either may come first; each step is timed when first seen."""
        path = order.path
        body: dict[str, Any] = {}
        if "published" not in order.reached or "order" not in order.reached:
            reply = await self._read(order)
            body = reply.json() if reply.status_code == 200 else {}
        if "published" not in order.reached:
            events = body.get("events", [])
            mine = [e for e in events if e["eventType"] == path.trigger]
            if mine:
                order.event_id = mine[0]["eventId"]
            if mine and all(e["status"] == "Published" for e in events):
                topic = topic_for_event_type(path.trigger)
                self._reach(
                    order, "published", f"{path.trigger} {order.event_id} published to {topic}"
                )
        inventory = self._mongo.inventory
        if "stock" not in order.reached:
            reservation = await inventory.reservations.find_one({"orderId": order.order_id})
            if reservation is not None and reservation.get("status") == path.stock:
                reason = reservation.get("reason")
                text = {
                    "reserved": "stock reserved by inventory",
                    "rejected": f"stock rejected by inventory: {reason}",
                    "cancelled": "stock released by inventory (reservation cancelled)",
                }[path.stock]
                self._reach(order, "stock", text)
        if "announced" not in order.reached:
            verdict = await inventory[OUTBOX_COLLECTION].find_one(
                {"aggregateId": order.order_id, "eventType": path.verdict}
            )
            if verdict is not None:
                order.verdict_id = str(verdict["_id"])
                if verdict.get("status") == "Published":
                    topic = topic_for_event_type(path.verdict)
                    text = f"inventory's {path.verdict} {order.verdict_id} published to {topic}"
                    self._reach(order, "announced", text)
        if "order" not in order.reached and order.verdict_id is not None:
            steps = [h for h in body.get("history", []) if h.get("eventId") == order.verdict_id]
            if steps and body.get("status") == path.name:
                note = f" ({steps[0]['note']})" if steps[0].get("note") else ""
                self._reach(
                    order, "order", f"order {path.name}, {path.verdict} in its history{note}"
                )
        mail_event = order.verdict_id if path.mail_answers_verdict else order.event_id
        if "emailed" not in order.reached and mail_event and any(mail_event in m for m in inbox):
            self._reach(order, "emailed", f"{path.mail} received")

    async def _read(self, order: Tracked) -> httpx.Response:
        return await self._http.get(
            f"{self.endpoints.order_url}/orders/{order.order_id}",
            headers=self.customers.headers(order.user),
        )

    def _reach(self, order: Tracked, stage: str, text: str) -> None:
        order.reached[stage] = time.monotonic()
        ms = (order.reached[stage] - order.started) * 1000
        _say(f"{self._clock()} order {order.order_id} {text} (+{ms:.0f} ms)")

    async def follow(self, orders: list[Tracked], settle_seconds: float = SETTLE_SECONDS) -> bool:
        """Poll until every order reached every stage, printing each step as it happens."""
        deadline = time.monotonic() + settle_seconds
        while time.monotonic() < deadline:
            inbox = await self._inbox.message_ids()
            for order in orders:
                await self._advance(order, inbox)
            if all(o.complete for o in orders):
                return True
            await asyncio.sleep(POLL_SECONDS)
        return False

    async def show_pending(self, orders: list[Tracked]) -> None:
        for order in orders:
            reply = await self._read(order)
            status = [e["status"] for e in reply.json()["events"]]
            _say(f"{self._clock()} order {order.order_id} events while broker is down: {status}")

    async def poison(self) -> bool:
        """Produce a message that is not JSON; inventory (order.created's consumer) must
        dead-letter it."""
        key = f"demo-poison-{uuid.uuid4().hex[:8]}"
        producer = AIOKafkaProducer(bootstrap_servers=self.endpoints.kafka, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                ORDER_CREATED_TOPIC,
                b"{this is not json",
                key=key.encode(),
                headers=[
                    (Header.IDEMPOTENCY_KEY, key.encode()),
                    (Header.EVENT_TYPE, b"OrderCreated"),
                ],
            )
        finally:
            await producer.stop()
        _say(f"{self._clock()} poison message {key} produced to {ORDER_CREATED_TOPIC}")
        records = await _dlq_records_for_key(self.endpoints.kafka, key, want=1, within=60.0)
        for record in records:
            _say(
                f"{self._clock()} dead-lettered by {record.get(Header.CONSUMER_GROUP)}: "
                f"{record.get(Header.FAILURE_REASON)}"
            )
        return INVENTORY_GROUP in {r.get(Header.CONSUMER_GROUP) for r in records}

    def summary(self) -> str:
        header = f"{'order':<26} {'total':>9}  {'phase':<22} {'ends':<10} " + " ".join(
            f"{s:>10}" for s in STAGES[1:]
        )
        lines = [header, "-" * len(header)]
        for o in self.tracked:
            cells = []
            for stage in STAGES[1:]:
                at = o.reached.get(stage)
                cells.append(f"{(at - o.started) * 1000:>8.0f}ms" if at else f"{'MISSING':>10}")
            lines.append(
                f"{o.order_id:<26} {o.total!s:>9}  {o.note:<22} {o.path.name:<10} "
                + " ".join(cells)
            )
        return "\n".join(lines)


async def _dlq_records_for_key(
    bootstrap: str, key: str, want: int, within: float
) -> list[dict[str, str]]:
    """DLQ records with ``key`` (headers decoded): wait for ``want`` of them, ``within`` seconds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[dict[str, str]] = []
    try:
        consumer.assign(await topic_partitions(consumer, ORDER_CREATED_DLQ_TOPIC))
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + within
        while len(found) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.key == key.encode():
                        found.append({k: v.decode("utf-8", "replace") for k, v in record.headers})
    finally:
        await consumer.stop()
    return found


async def _seed_stock(env: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.inventory",
        "seed-stock",
        str(CATALOGUE),
        env=env,
    )
    if await asyncio.wait_for(process.wait(), timeout=60) != 0:
        raise RuntimeError("seeding the demo catalogue failed (see the message above)")


async def run_scenario(demo: Demo, restart_broker: Callable[[str], Awaitable[None]] | None) -> bool:
    n = demo.orders_per_phase
    _say("\n== 1. orders confirmed ==")
    happy = await demo.create_orders(n, "confirmed")
    ok = await demo.follow(happy)
    _say(f"\n== 2. an order rejected for lack of stock ({LIMITED_WANTED} x {LIMITED_SKU}) ==")
    ok = await demo.follow(await demo.create_orders(1, "out of stock", REJECTED)) and ok
    _say("\n== 3. a confirmed order cancelled ==")
    ok = await demo.follow([await demo.cancel(happy[0])]) and ok
    if restart_broker is not None:
        _say("\n== 4. the Kafka broker goes down; orders keep coming ==")
        await restart_broker("stop")
        during = await demo.create_orders(n, "created, broker down")
        await demo.show_pending(during)
        await restart_broker("start")
        ok = await demo.follow(during) and ok
    _say("\n== 5. a poison message ==")
    poisoned = await demo.poison()
    _say("\n== summary ==")
    _say(demo.summary())
    completed = sum(o.complete for o in demo.tracked)
    _say(
        f"\n{completed}/{len(demo.tracked)} orders and cancellations completed all "
        f"{len(STAGES)} steps; poison message dead-lettered: {'yes' if poisoned else 'NO'}"
    )
    return ok and poisoned and completed == len(demo.tracked)


def demo_stack_config(root: Path) -> StackConfig:
    """Free ports (a running `make up` is left alone) but no test hooks: the demo shows the
    system as it runs, so test commands and failpoints stay off."""
    return replace(
        StackConfig.for_tests(root),
        environment="local",
        enable_test_commands=False,
        enable_failpoints=False,
        kafka_libs=StackConfig.default().kafka_libs,
    )


async def _embedded(args: argparse.Namespace) -> bool:
    root = REPO_ROOT / ".stack" / "demo"
    shutil.rmtree(root, ignore_errors=True)  # every demo starts from empty databases and topics
    config = demo_stack_config(root)
    stack = Stack(config)
    _say(f"starting the embedded stack under {root} (logs in {config.logs_root}) ...")
    started = time.monotonic()
    try:
        stack.up(INFRA)
        await _seed_stock({**os.environ, **config.service_env()})
        # The pipeline only: the demo prints its own report, the console is for `make up`.
        stack.up(INFRA + SERVICES)
        _say(
            f"all components ready in {time.monotonic() - started:.1f}s; order API on "
            f"http://127.0.0.1:{config.port_of('order')}"
        )
        endpoints = Endpoints(
            order_url=f"http://127.0.0.1:{config.port_of('order')}",
            mongo_uri=config.mongo_uri,
            kafka=config.kafka_bootstrap,
            smtp_dir=config.smtp_dir,
        )

        async def restart_broker(action: str) -> None:
            if action == "stop":
                _say("stopping the Kafka broker ...")
                await asyncio.to_thread(stack.stop, "kafka")
            else:
                _say("starting the Kafka broker again ...")
                await asyncio.to_thread(stack.start, "kafka")
                _say("broker is back")

        # Two phases of orders (the happy path, the broker outage), one customer each.
        demo = Demo(endpoints, args.orders, Customers.of_stack(config, 2 * args.orders))
        try:
            return await run_scenario(demo, None if args.no_fault else restart_broker)
        finally:
            await demo.close()
    finally:
        _say("stopping the stack ...")
        stack.down()


async def _external(args: argparse.Namespace) -> bool:
    endpoints = Endpoints(
        order_url=args.order_url.rstrip("/"),
        mongo_uri=args.mongo_uri,
        kafka=args.kafka,
        mailpit_url=args.mailpit_url.rstrip("/"),
    )
    customers = await asyncio.to_thread(Customers.of_keycloak, args.keycloak_url.rstrip("/"))
    demo = Demo(endpoints, args.orders, customers)
    try:
        _say(
            "external mode: the broker restart is skipped (a container cannot restart its siblings)"
        )
        return await run_scenario(demo, None)
    finally:
        await demo.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stack.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--orders", type=int, default=3, help="orders per phase (default 3)")
    parser.add_argument("--no-fault", action="store_true", help="skip the broker restart")
    parser.add_argument(
        "--external",
        action="store_true",
        help="use running services (docker compose) instead of starting the stack",
    )
    parser.add_argument("--order-url", default="http://order:8000")
    parser.add_argument("--mongo-uri", default="mongodb://mongo:27017/?replicaSet=rs0")
    parser.add_argument("--kafka", default="kafka:9092")
    parser.add_argument(
        "--redis",
        default="redis://redis:6379/0",
        help="accepted for symmetry with the services' settings; unused",
    )
    parser.add_argument("--mailpit-url", default="http://mailpit:8025")
    parser.add_argument(
        "--keycloak-url",
        default="http://keycloak:8080/realms/outbox",
        help="the Keycloak realm the customers' tokens come from (--external)",
    )
    args = parser.parse_args(argv)
    if args.orders < 1:
        parser.error("--orders must be at least 1")
    try:
        ok = asyncio.run(_external(args) if args.external else _embedded(args))
    except Exception as exc:
        _say(f"demo failed: {type(exc).__name__}: {exc}")
        return 1
    _say("demo passed" if ok else "demo FAILED: see the summary above")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
