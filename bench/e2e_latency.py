"""End-to-end latency: from an order's scheduled send time to the reservation written and the
email received.

Clocks: every timestamp is the wall clock of this one machine (``time.time()`` in the load
generator, the server's commit ``wallTime`` in MongoDB, the SMTP sink's ``time_ns()`` in each
``.eml`` file name), so differences between them are meaningful.

* **Scheduled send**: ``t0 + i / rate`` for order ``i``, the moment the open-loop schedule
  meant to send it: a sender or API that falls behind shows as latency (no coordinated
  omission). **201**: when the response reached the load generator (a diagnostic split).
* **Reservation written**: the ``wallTime`` of the insert in a change stream on
  ``<inventory db>.reservations``: the commit time of the inventory transaction (millisecond
  resolution), not the moment we happened to look.
* **Order's verdict**: where the order service follows inventory's verdict (our pipeline), the
  ``at`` of the order's history step that made it ``confirmed`` or ``rejected`` (the verdict
  consumer's clock), read once the order's reservation and email are in: the loop closed.
* **Email received**: the nanosecond timestamp the sink put in the file name when the SMTP
  ``DATA`` arrived; the order id is read from the ``Subject`` line. An order's email is its
  verdict's mail: the confirmation (sent on inventory's ``StockReserved``) or the rejection
  notice (``StockRejected``), whichever the order got; so this figure covers the whole loop
  (our relay, inventory's transaction, inventory's relay, the email service), while the
  reservation's covers the first half.

The load is open-loop: order ``i`` is sent at ``t0 + i / rate`` whether or not earlier ones have
answered. In-flight requests are capped (memory, sockets); every time the cap makes a send wait
is counted (``in_flight_cap_hits``): the load was closed-loop for that long. ``achieved_rate``
counts only the sends that left inside the measured window. Orders whose reservation or email
did not arrive within the settle timeout count as infinitely late in the percentiles, and are
then diagnosed: **late** (arrived during a further grace period) or **lost** (never arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
from aiokafka import AIOKafkaConsumer
from bson import ObjectId

from bench import cpu
from bench.stats import Distribution, achieved_rate, open_loop_schedule
from services.inventory.models import RESERVATIONS, ReservationStatus
from services.order.models import ORDERS_COLLECTION
from services.order.schemas import OrderStatus
from shared.contracts import ORDER_CREATED_TOPIC
from shared.mongo import make_mongo_client
from stack.issuer import UserTokens
from stack.observe import Inbox, topic_partitions

BENCH_SKUS: Final = tuple(f"BENCH-SKU-{n}" for n in range(1, 9))
# Enough stock that no benchmark order is ever rejected for want of it.
BENCH_STOCK: Final = 1_000_000_000
# The subjects of the email service's three mails (services/email/models.py): the two verdict
# mails (the confirmation, the rejection notice) and the cancellation notice.
_SUBJECT = re.compile(r"^Order ([0-9a-f]{24}) (confirmed|could not be fulfilled|cancelled)$")
_CANCELLED = "cancelled"
_REJECTED = "could not be fulfilled"
# The statuses an order takes from inventory's verdict (services/order/lifecycle.py).
VERDICTS: Final = (OrderStatus.CONFIRMED.value, OrderStatus.REJECTED.value)
# At most this many requests in flight: bounds memory and sockets if the API stalls.
MAX_IN_FLIGHT: Final = 256
HTTP_TIMEOUT_SECONDS: Final = 10.0
# After the settle window, how long a missing order may still arrive to count as late, not lost.
GRACE_SECONDS: Final = 15.0
# Order ids listed per diagnosis (the counts are complete).
LISTED_IDS: Final = 20
# The customers the load spreads its orders over (each one's bearer token is minted before the
# measured window).
BENCH_USERS: Final = 97
# How long a watcher's task gets to end once asked to (it wakes at least every 200 ms).
WATCHER_STOP_SECONDS: Final = 5.0


async def end_watch_task(task: asyncio.Task[None] | None, stopping: asyncio.Event) -> None:
    """Stop a watcher's loop: set ``stopping`` (the loop checks it on every wake-up), cancel
    it, and wait at most :data:`WATCHER_STOP_SECONDS`. The flag is what ends it for sure: on
    Python 3.11 a cancellation racing a driver's internal ``asyncio.wait_for`` can be
    swallowed (CPython gh-86296), and a loop that lost its cancel would be awaited forever
    (a quick capacity ramp on a loaded machine hung there)."""
    stopping.set()
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task}, timeout=WATCHER_STOP_SECONDS)
    if task.done() and not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()  # retrieved, so asyncio does not log it as never retrieved


def bench_user(n: int) -> str:
    """The customer of order ``n``: the subject of the token it is sent with."""
    return f"bench-user-{n % BENCH_USERS}"


def order_body(n: int) -> dict[str, Any]:
    """A small, valid order (two lines, distinct per ``n`` so no two requests look alike);
    its ``userId`` is its customer's, which the token it is sent with names."""
    first = BENCH_SKUS[n % len(BENCH_SKUS)]
    second = BENCH_SKUS[(n + 3) % len(BENCH_SKUS)]
    return {
        "userId": bench_user(n),
        "customerEmail": f"bench{n % BENCH_USERS}@example.com",
        "items": [
            {"sku": first, "quantity": 1, "unitPrice": "19.99"},
            {"sku": second, "quantity": 2, "unitPrice": "5.00"},
        ],
    }


async def seed_bench_stock(mongo_uri: str, database: str) -> None:
    """Give every benchmark SKU a practically endless stock (upsert, idempotent)."""
    client = make_mongo_client(mongo_uri, 10.0, "bench-seed")
    try:
        stock = client[database]["stock"]
        for sku in BENCH_SKUS:
            await stock.update_one({"sku": sku}, {"$set": {"available": BENCH_STOCK}}, upsert=True)
    finally:
        await client.close()


@dataclass
class Missing:
    """Orders without a reservation or an email at the end of the settle window."""

    late: int = 0
    lost: int = 0
    lost_ids: list[str] = field(default_factory=list)
    late_ids: list[str] = field(default_factory=list)


@dataclass
class LatencyResult:
    design: str
    target_rate: float
    duration_seconds: float
    sent: int = 0
    created: int = 0
    errors: int = 0
    achieved_rate: float = 0.0
    in_flight_cap_hits: int = 0
    cancelled: int = 0
    # Cancelled orders whose reservation was not 'cancelled' or whose cancellation email was
    # missing at the end of the settle window (and of the grace period).
    cancellations_incomplete: int = 0
    settle_timeout_seconds: float = 0.0
    published: Distribution | None = None
    reservation: Distribution | None = None
    email: Distribution | None = None
    reservation_from_201: Distribution | None = None
    missing_reservation: Missing = field(default_factory=Missing)
    missing_email: Missing = field(default_factory=Missing)
    # Where the order follows inventory's verdict: scheduled send -> the order's status said it.
    verdict: Distribution | None = None
    missing_verdict: Missing = field(default_factory=Missing)
    # Orders (not cancelled) whose verdict mail was a rejection notice: inventory found their
    # stock short. The bench's SKUs never run out (BENCH_STOCK), so anything but 0 says the
    # stock was not seeded.
    rejected: int = 0
    notes: list[str] = field(default_factory=list)

    # Orders without a reservation, an email or (where it is followed) the order's verdict at
    # the end of the settle window.
    orders_incomplete: int = 0

    def incomplete(self) -> int:
        """Orders that did not complete every step within the settle window (a cancelled one:
        its cancellation, within the settle window and the grace period)."""
        return self.orders_incomplete + self.cancellations_incomplete


@dataclass
class OrderTimes:
    """Per order id, wall-clock seconds of what :func:`measure_e2e` observed: the 201 (orders
    not cancelled), the event readable in Kafka, its record's CreateTime, the reservation's
    commit."""

    answered: dict[str, float] = field(default_factory=dict)
    kafka_visible: dict[str, float] = field(default_factory=dict)
    kafka_created: dict[str, float] = field(default_factory=dict)
    reserved: dict[str, float] = field(default_factory=dict)


class InsertWatcher:
    """Collects ``order id -> commit wallTime`` of the documents inserted into one collection
    (by default the reservations; ``key`` names the field holding the order id)."""

    def __init__(
        self,
        mongo_uri: str,
        database: str,
        collection: str = RESERVATIONS,
        key: str = "orderId",
    ) -> None:
        self._client = make_mongo_client(mongo_uri, 10.0, "bench-e2e-watch")
        self._collection = self._client[database][collection]
        self._key = key
        self.committed: dict[str, float] = {}
        self.fallbacks = 0
        self._opened = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bench-reservation-watch")
        opened = asyncio.create_task(self._opened.wait())
        done, _ = await asyncio.wait({opened, self._task}, timeout=15)
        if opened not in done:
            opened.cancel()
            if self._task in done:
                self._task.result()  # re-raise what broke the stream
            raise TimeoutError(f"change stream on {self._collection.name} did not open within 15 s")

    async def _run(self) -> None:
        pipeline: list[dict[str, Any]] = [
            {"$match": {"operationType": "insert"}},
            {"$project": {f"fullDocument.{self._key}": 1, "wallTime": 1, "operationType": 1}},
        ]
        async with await self._collection.watch(pipeline, max_await_time_ms=200) as stream:
            self._opened.set()
            while not self._stopping.is_set():
                change = await stream.try_next()
                if change is None:
                    continue
                order_id = change.get("fullDocument", {}).get(self._key)
                if not isinstance(order_id, str) or order_id in self.committed:
                    continue
                wall = change.get("wallTime")
                if wall is not None:
                    self.committed[order_id] = wall.timestamp()
                else:  # a server without wallTime: the moment we saw it (an upper bound)
                    self.fallbacks += 1
                    self.committed[order_id] = time.time()

    async def cancelled(self, order_ids: list[str]) -> set[str]:
        """Which of ``order_ids`` have a reservation record that reads ``cancelled``."""
        cursor = self._collection.find(
            {"orderId": {"$in": order_ids}, "status": ReservationStatus.CANCELLED.value},
            {"orderId": 1},
        )
        return {doc["orderId"] async for doc in cursor}

    async def close(self) -> None:
        await end_watch_task(self._task, self._stopping)
        await self._client.close()


class VerdictReader:
    """``orderId -> when the order's status took inventory's verdict``: the ``at`` of the
    history step that made it ``confirmed`` or ``rejected``. Read on demand (only for the
    orders whose reservation and email are in), so the settle wait adds no load while the
    pipeline is still busy."""

    def __init__(self, mongo_uri: str, database: str) -> None:
        self._client = make_mongo_client(mongo_uri, 10.0, "bench-e2e-verdicts")
        self._orders = self._client[database][ORDERS_COLLECTION]
        self.decided: dict[str, float] = {}

    async def read(self, order_ids: list[str]) -> None:
        """Look up which of ``order_ids`` reached a verdict (kept in :attr:`decided`)."""
        cursor = self._orders.find(
            {"_id": {"$in": [ObjectId(o) for o in order_ids]}, "status": {"$in": VERDICTS}},
            {"status": 1, "history": 1},
        )
        async for doc in cursor:
            step = next(
                (h for h in doc.get("history", []) if h.get("status") == doc["status"]), None
            )
            if step is not None:
                at: datetime = step["at"]
                self.decided[str(doc["_id"])] = at.replace(tzinfo=at.tzinfo or UTC).timestamp()

    async def close(self) -> None:
        await self._client.close()


class _KafkaWatcher:
    """``orderId -> when the event became readable`` by a ``read_committed`` consumer.

    Not a goal figure: it splits the end-to-end latency into relay (201 -> visible in Kafka) and
    consumer (visible -> side effect) shares, so a slow total can be routed to the right part.
    No consumer group: it reads every partition from the end, and commits nothing.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=50,
        )
        self._topic = topic
        self.visible: dict[str, float] = {}
        # The record's own timestamp (CreateTime: when the relay's producer took the send).
        self.created: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        tps = await topic_partitions(self._consumer, self._topic)
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name="bench-kafka-watch")

    async def _run(self) -> None:
        while not self._stopping.is_set():
            batch = await self._consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batch.values():
                for record in records:
                    if record.key is not None:
                        key = record.key.decode(errors="replace")
                        self.visible.setdefault(key, now)
                        self.created.setdefault(key, record.timestamp / 1000)

    async def close(self) -> None:
        await end_watch_task(self._task, self._stopping)
        await self._consumer.stop()


class EmailScanner:
    """``orderId -> receipt time`` of each order's verdict mail among the sink's new messages
    (the confirmation or the rejection notice; first copy wins), the orders that got a
    rejection notice, and those that got a cancellation notice."""

    def __init__(self, directory: Path) -> None:
        self._inbox = Inbox(directory)
        self._inbox.mark_start()
        self.received: dict[str, float] = {}
        self.rejected: set[str] = set()
        self.cancellations: set[str] = set()

    def scan(self) -> None:
        for mail in self._inbox.scan():
            match = _SUBJECT.match(mail.subject)
            if match is None or mail.received_at is None:
                continue
            order_id, kind = match.group(1), match.group(2)
            if kind == _CANCELLED:
                self.cancellations.add(order_id)
                continue
            self.received.setdefault(order_id, mail.received_at)
            if kind == _REJECTED:
                self.rejected.add(order_id)


@dataclass
class _Sent:
    """What the sender recorded: per created order its scheduled send and its 201 (wall
    clock), and every send's actual offset from the start."""

    scheduled: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    send_offsets: list[float] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)


async def _send_orders(
    api_url: str,
    rate: float,
    duration: float,
    sent: _Sent,
    result: LatencyResult,
    body_for: Callable[[int], dict[str, Any]],
    cancel_every: int,
    tokens: UserTokens,
) -> None:
    schedule = open_loop_schedule(rate, duration)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    async with httpx.AsyncClient(
        base_url=api_url, timeout=HTTP_TIMEOUT_SECONDS, limits=limits
    ) as client:

        async def one(n: int, due_wall: float) -> None:
            body = body_for(n)
            # The token of the body's customer: minted before the window, looked up here.
            auth = tokens.headers(body["userId"])
            try:
                response = await client.post("/orders", json=body, headers=auth)
                answered = time.time()
                if response.status_code == 201:
                    order_id = response.json()["id"]
                    sent.scheduled[order_id] = due_wall
                    sent.answered[order_id] = answered
                    if cancel_every and n % cancel_every == cancel_every - 1:
                        # At once, so its cancel races its creation through the pipeline.
                        cancel = await client.post(f"/orders/{order_id}/cancel", headers=auth)
                        if cancel.status_code == 200:
                            sent.cancelled.add(order_id)
                        else:
                            result.errors += 1
                else:
                    result.errors += 1
            except httpx.HTTPError:
                result.errors += 1
            finally:
                in_flight.release()

        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        started_wall = time.time()
        for n, offset in enumerate(schedule):
            delay = started + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the open-loop schedule, not a synchronisation wait
            if in_flight.locked():
                result.in_flight_cap_hits += 1  # this send waits for an answer: closed loop
            await in_flight.acquire()
            sent.send_offsets.append(time.monotonic() - started)
            tasks.append(asyncio.create_task(one(n, started_wall + offset)))
            result.sent += 1
        await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), timeout=HTTP_TIMEOUT_SECONDS + 5
        )
    result.created = len(sent.scheduled)
    result.achieved_rate = achieved_rate(sent.send_offsets, duration)


def _diagnose(missing: set[str], arrived_later: set[str]) -> Missing:
    late = sorted(missing & arrived_later)
    lost = sorted(missing - arrived_later)
    return Missing(
        late=len(late), lost=len(lost), late_ids=late[:LISTED_IDS], lost_ids=lost[:LISTED_IDS]
    )


async def measure_e2e(
    *,
    design: str,
    api_url: str,
    mongo_uri: str,
    kafka_bootstrap: str,
    inventory_database: str,
    smtp_dir: Path,
    rate: float,
    duration: float,
    settle_timeout: float,
    tokens: UserTokens,
    grace_seconds: float = GRACE_SECONDS,
    body_for: Callable[[int], dict[str, Any]] = order_body,
    cancel_every: int = 0,
    times: OrderTimes | None = None,
    cpu_window: cpu.Window | None = None,
    orders_database: str | None = None,
) -> LatencyResult:
    """Send ``rate`` orders/s for ``duration`` s, then wait up to ``settle_timeout`` s for every
    reservation and verdict mail (the confirmation or the rejection notice); return the latency
    distributions from the scheduled send to each, and say of every order still missing whether
    it arrived during ``grace_seconds`` more.

    With ``cancel_every`` = k, every k-th order is cancelled right after its 201; such an order
    completes when its reservation reads ``cancelled`` and its cancellation email arrived (its
    confirmation may or may not be sent, depending on which event the email service saw first).
    ``times``, when given, receives each order's own timestamps (for a latency breakdown).
    ``cpu_window``, when given, is open from the first send to the end of the settle wait.
    ``orders_database``, when given (a pipeline whose order service follows inventory's
    verdict), is where the orders are: an order not cancelled completes only once its status
    took its verdict too (``confirmed`` or ``rejected``), and ``verdict`` is the latency to it.
    Each order is sent with its customer's bearer token from ``tokens``, minted here before
    the first send (for the ``userId`` of ``body_for(n)``, n < :data:`BENCH_USERS`).
    """
    tokens.mint({str(body_for(n)["userId"]) for n in range(BENCH_USERS)})
    result = LatencyResult(
        design=design,
        target_rate=round(rate, 1),
        duration_seconds=duration,
        settle_timeout_seconds=settle_timeout,
    )
    watcher = InsertWatcher(mongo_uri, inventory_database)
    await watcher.start()
    kafka = _KafkaWatcher(kafka_bootstrap, ORDER_CREATED_TOPIC)
    try:
        await kafka.start()
    except BaseException:
        await watcher.close()
        raise
    scanner = EmailScanner(smtp_dir)
    verdicts = VerdictReader(mongo_uri, orders_database) if orders_database else None
    sent = _Sent()
    cancelled_done: set[str] = set()

    async def complete() -> bool:
        scanner.scan()
        live = [o for o in sent.scheduled if o not in sent.cancelled]
        if not all(o in watcher.committed and o in scanner.received for o in live):
            return False
        if verdicts is not None:
            undecided = [o for o in live if o not in verdicts.decided]
            if undecided:
                await verdicts.read(undecided)
                if any(o not in verdicts.decided for o in undecided):
                    return False
        waiting = [o for o in sent.cancelled - cancelled_done if o in scanner.cancellations]
        if waiting:
            cancelled_done.update(await watcher.cancelled(waiting))
        return cancelled_done >= sent.cancelled

    try:
        if cpu_window is not None:
            cpu_window.open()
        await _send_orders(api_url, rate, duration, sent, result, body_for, cancel_every, tokens)
        deadline = time.monotonic() + settle_timeout
        while not await complete() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)  # poll interval of the settle wait, bounded by its deadline
        if cpu_window is not None:
            cpu_window.close()
        reserved, mailed = set(watcher.committed), set(scanner.received)
        live = set(sent.scheduled) - sent.cancelled
        missing_r = live - reserved
        missing_e = live - mailed
        if verdicts is not None:
            await verdicts.read(sorted(live - set(verdicts.decided)))
        decided = set(verdicts.decided) if verdicts is not None else live
        missing_v = live - decided
        result.orders_incomplete = len(missing_r | missing_e | missing_v)
        if missing_r or missing_e or missing_v or cancelled_done < sent.cancelled:
            grace = time.monotonic() + grace_seconds
            while not await complete() and time.monotonic() < grace:  # noqa: ASYNC110
                await asyncio.sleep(0.5)  # poll interval of the grace wait, bounded by it
            result.missing_reservation = _diagnose(missing_r, set(watcher.committed))
            result.missing_email = _diagnose(missing_e, set(scanner.received))
            if verdicts is not None:
                await verdicts.read(sorted(missing_v))
                result.missing_verdict = _diagnose(missing_v, set(verdicts.decided))
    finally:
        await watcher.close()
        await kafka.close()
        if verdicts is not None:
            await verdicts.close()
    result.cancelled = len(sent.cancelled)
    result.rejected = len(scanner.rejected - sent.cancelled)
    result.cancellations_incomplete = len(sent.cancelled - cancelled_done)
    if watcher.fallbacks:
        result.notes.append(f"{watcher.fallbacks} reservations timed at observation (no wallTime)")

    def latencies(
        arrivals: dict[str, float], within: set[str], start: dict[str, float]
    ) -> Distribution:
        found = [(arrivals[o] - t) * 1000 for o, t in start.items() if o in within]
        return Distribution.of(found, len(start) - len(found))

    # The latency figures follow the orders that were not cancelled (a cancelled order may
    # never be reserved or confirmed, by design); cancelled ones count in ``incomplete``.
    scheduled = {o: t for o, t in sent.scheduled.items() if o not in sent.cancelled}
    answered = {o: t for o, t in sent.answered.items() if o not in sent.cancelled}
    published = {o for o in kafka.visible if o in scheduled}
    result.published = latencies(kafka.visible, published, scheduled)
    result.reservation = latencies(watcher.committed, reserved, scheduled)
    result.email = latencies(scanner.received, mailed, scheduled)
    if verdicts is not None:
        result.verdict = latencies(verdicts.decided, decided, scheduled)
    result.reservation_from_201 = latencies(watcher.committed, reserved, answered)
    if times is not None:
        times.answered.update(answered)
        times.kafka_visible.update(kafka.visible)
        times.kafka_created.update(kafka.created)
        times.reserved.update(watcher.committed)
    return result
