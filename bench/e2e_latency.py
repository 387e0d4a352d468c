"""End-to-end latency: from the order API's 201 to the reservation written and the email received.

Clocks: every timestamp is the wall clock of this one machine (``time.time()`` in the load
generator, the server's commit ``wallTime`` in MongoDB, the SMTP sink's ``time_ns()`` in each
``.eml`` file name), so differences between them are meaningful.

* **201**: when the response reached the load generator (``time.time()`` after the body).
* **Reservation written**: the ``wallTime`` of the insert in a change stream on
  ``<inventory db>.reservations``: the commit time of the inventory transaction (millisecond
  resolution), not the moment we happened to look.
* **Email received**: the nanosecond timestamp the sink put in the file name when the SMTP
  ``DATA`` arrived; the order id is read from the ``Subject`` line.

The load is open-loop: order ``i`` is sent at ``t0 + i / rate`` whether or not earlier ones have
answered, so a slow pipeline shows up as latency instead of being hidden by a slower sender.
Orders whose reservation or email did not arrive within the settle timeout count as infinitely
late in the percentiles (a p99 then reads "> timeout" rather than a flattering number).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.contracts import ORDER_CREATED_TOPIC
from shared.mongo import make_mongo_client

BENCH_SKUS: Final = tuple(f"BENCH-SKU-{n}" for n in range(1, 9))
# Enough stock that no benchmark order is ever rejected for want of it.
BENCH_STOCK: Final = 1_000_000_000
_SUBJECT = re.compile(rb"^Subject: Order ([0-9a-f]{24}) confirmed", re.MULTILINE)
# At most this many requests in flight: bounds memory and sockets if the API stalls.
MAX_IN_FLIGHT: Final = 256
HTTP_TIMEOUT_SECONDS: Final = 10.0


def order_body(n: int) -> dict[str, Any]:
    """A small, valid order (two lines, distinct per ``n`` so no two requests look alike)."""
    first = BENCH_SKUS[n % len(BENCH_SKUS)]
    second = BENCH_SKUS[(n + 3) % len(BENCH_SKUS)]
    return {
        "userId": f"bench-user-{n % 97}",
        "customerEmail": f"bench{n % 97}@example.com",
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


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending list; ``inf`` entries allowed."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Distribution:
    """Latency figures in milliseconds; ``missing`` orders count as infinitely late."""

    count: int
    missing: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, latencies_ms: list[float], missing: int) -> Distribution:
        values = sorted(latencies_ms) + [math.inf] * missing
        return cls(
            count=len(latencies_ms),
            missing=missing,
            p50_ms=round(percentile(values, 50), 1),
            p95_ms=round(percentile(values, 95), 1),
            p99_ms=round(percentile(values, 99), 1),
            max_ms=round(values[-1], 1) if values else math.nan,
        )


@dataclass
class LatencyResult:
    design: str
    target_rate: float
    duration_seconds: float
    sent: int = 0
    created: int = 0
    errors: int = 0
    achieved_rate: float = 0.0
    settle_timeout_seconds: float = 0.0
    published: Distribution | None = None
    reservation: Distribution | None = None
    email: Distribution | None = None
    notes: list[str] = field(default_factory=list)


class _ReservationWatcher:
    """Collects ``orderId -> commit wallTime`` of new reservations from a change stream."""

    def __init__(self, mongo_uri: str, database: str) -> None:
        self._client = make_mongo_client(mongo_uri, 10.0, "bench-e2e-watch")
        self._collection = self._client[database]["reservations"]
        self.committed: dict[str, float] = {}
        self.fallbacks = 0
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bench-reservation-watch")
        opened = asyncio.create_task(self._opened.wait())
        done, _ = await asyncio.wait({opened, self._task}, timeout=15)
        if opened not in done:
            opened.cancel()
            if self._task in done:
                self._task.result()  # re-raise what broke the stream
            raise TimeoutError("change stream on reservations did not open within 15 s")

    async def _run(self) -> None:
        pipeline: list[dict[str, Any]] = [
            {"$match": {"operationType": "insert"}},
            {"$project": {"fullDocument.orderId": 1, "wallTime": 1, "operationType": 1}},
        ]
        async with await self._collection.watch(pipeline, max_await_time_ms=200) as stream:
            self._opened.set()
            while True:
                change = await stream.try_next()
                if change is None:
                    continue
                order_id = change.get("fullDocument", {}).get("orderId")
                if not isinstance(order_id, str) or order_id in self.committed:
                    continue
                wall = change.get("wallTime")
                if wall is not None:
                    self.committed[order_id] = wall.timestamp()
                else:  # a server without wallTime: the moment we saw it (an upper bound)
                    self.fallbacks += 1
                    self.committed[order_id] = time.time()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
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
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self._topic)
        for _ in range(100):
            if partitions:
                break
            await self._consumer._client.force_metadata_update()  # metadata is fetched lazily
            partitions = self._consumer.partitions_for_topic(self._topic)
        if not partitions:
            raise RuntimeError(f"topic {self._topic} has no partitions")
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name="bench-kafka-watch")

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batch.values():
                for record in records:
                    if record.key is not None:
                        self.visible.setdefault(record.key.decode(errors="replace"), now)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._consumer.stop()


class _EmailScanner:
    """Reads new ``.eml`` files of the sink: ``orderId -> receipt time`` (first copy wins)."""

    def __init__(self, directory: Path, since_ns: int) -> None:
        self._directory = directory
        self._since_ns = since_ns
        self._seen: set[str] = set()
        self.received: dict[str, float] = {}

    def scan(self) -> None:
        try:
            names = [e.name for e in _scandir(self._directory)]
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(".eml") or name in self._seen:
                continue
            stamp_text = name.split("-", 1)[0]
            if not stamp_text.isdigit() or int(stamp_text) < self._since_ns:
                self._seen.add(name)
                continue
            self._seen.add(name)
            try:
                head = (self._directory / name).read_bytes()[:4096]
            except OSError:
                continue
            match = _SUBJECT.search(head)
            if match:
                order_id = match.group(1).decode()
                self.received.setdefault(order_id, int(stamp_text) / 1e9)


def _scandir(directory: Path) -> list[Any]:
    import os

    with os.scandir(directory) as entries:
        return list(entries)


async def _send_orders(
    api_url: str,
    rate: float,
    duration: float,
    created: dict[str, float],
    result: LatencyResult,
    body_for: Callable[[int], dict[str, Any]],
) -> None:
    total = max(1, int(rate * duration))
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    async with httpx.AsyncClient(
        base_url=api_url, timeout=HTTP_TIMEOUT_SECONDS, limits=limits
    ) as client:

        async def one(n: int) -> None:
            try:
                response = await client.post("/orders", json=body_for(n))
                answered = time.time()
                if response.status_code == 201:
                    created[response.json()["id"]] = answered
                else:
                    result.errors += 1
            except httpx.HTTPError:
                result.errors += 1
            finally:
                in_flight.release()

        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        for n in range(total):
            due = started + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the open-loop schedule, not a synchronisation wait
            await in_flight.acquire()
            tasks.append(asyncio.create_task(one(n)))
            result.sent += 1
        await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), timeout=HTTP_TIMEOUT_SECONDS + 5
        )
        elapsed = time.monotonic() - started
    result.created = len(created)
    result.achieved_rate = round(result.sent / elapsed, 1) if elapsed > 0 else 0.0


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
    body_for: Callable[[int], dict[str, Any]] = order_body,
) -> LatencyResult:
    """Send ``rate`` orders/s for ``duration`` s, then wait up to ``settle_timeout`` s for every
    reservation and email; return the latency distributions from 201 to each."""
    result = LatencyResult(
        design=design,
        target_rate=round(rate, 1),
        duration_seconds=duration,
        settle_timeout_seconds=settle_timeout,
    )
    watcher = _ReservationWatcher(mongo_uri, inventory_database)
    await watcher.start()
    kafka = _KafkaWatcher(kafka_bootstrap, ORDER_CREATED_TOPIC)
    try:
        await kafka.start()
    except BaseException:
        await watcher.close()
        raise
    scanner = _EmailScanner(smtp_dir, since_ns=time.time_ns())
    created: dict[str, float] = {}
    try:
        await _send_orders(api_url, rate, duration, created, result, body_for)
        deadline = time.monotonic() + settle_timeout
        while time.monotonic() < deadline:
            scanner.scan()
            if all(o in watcher.committed and o in scanner.received for o in created):
                break
            await asyncio.sleep(0.2)  # poll interval of the settle wait, bounded by its deadline
        scanner.scan()
    finally:
        await watcher.close()
        await kafka.close()
    if watcher.fallbacks:
        result.notes.append(f"{watcher.fallbacks} reservations timed at observation (no wallTime)")
    reservations = [
        (watcher.committed[o] - t) * 1000 for o, t in created.items() if o in watcher.committed
    ]
    emails = [(scanner.received[o] - t) * 1000 for o, t in created.items() if o in scanner.received]
    published = [(kafka.visible[o] - t) * 1000 for o, t in created.items() if o in kafka.visible]
    result.published = Distribution.of(published, len(created) - len(published))
    result.reservation = Distribution.of(reservations, len(created) - len(reservations))
    result.email = Distribution.of(emails, len(created) - len(emails))
    return result
