"""Order API throughput next to the raw transaction it wraps, both at concurrency 32.

* ``raw_txn``: the same two inserts the API commits (an order document and its outbox event),
  issued directly with PyMongo's AsyncMongoClient through ``shared.mongo.run_in_transaction``
  (majority, snapshot, with_transaction retries), 32 concurrent loops.
* ``api``: ``python -m services.order`` as a real uvicorn process, 32 httpx clients posting
  back to back (closed loop) over keep-alive connections; only 201s count.

The ratio api/raw is the cost of HTTP, validation, Beanie and JSON around the transaction.
Load generator and server share the machine, so the API figure includes the client's CPU.

``python -m bench.order_api [--seconds 10] [--mongo-uri URI]``: without ``--mongo-uri`` a MongoDB
of the embedded stack is started in a temporary directory and wiped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import httpx
from bson import Decimal128, ObjectId
from pymongo.asynchronous.client_session import AsyncClientSession

from shared.contracts import AGGREGATE_ORDER, EVENT_ORDER_CREATED, OutboxStatus
from shared.mongo import make_mongo_client, run_in_transaction
from shared.outbox import OUTBOX_COLLECTION

CONCURRENCY: Final = 32
RAW_DATABASE: Final = "bench_raw_txn"
API_DATABASE: Final = "bench_order_api"
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
READY_TIMEOUT: Final = 60.0


def order_body(n: int) -> dict[str, Any]:
    return {
        "userId": f"bench-user-{n % 1000}",
        "customerEmail": f"bench{n % 1000}@example.com",
        "items": [
            {"sku": "BENCH-SKU-1", "quantity": 2, "unitPrice": "12.50"},
            {"sku": "BENCH-SKU-2", "quantity": 1, "unitPrice": "3.99"},
        ],
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    if len(samples) < 2:
        return {}
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_ms": round(cuts[49] * 1000, 2), "p99_ms": round(cuts[98] * 1000, 2)}


async def measure_raw_txn(
    mongo_uri: str, seconds: float, concurrency: int = CONCURRENCY
) -> dict[str, Any]:
    """Transactions/s of the bare two-insert transaction, ``concurrency`` loops for ``seconds``."""
    client = make_mongo_client(mongo_uri, 30.0, "bench-raw-txn")
    db = client[RAW_DATABASE]
    await client.drop_database(RAW_DATABASE)
    payload = json.dumps(order_body(0))
    done = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def work(session: AsyncClientSession) -> None:
        now = datetime.now(UTC)
        order_id = ObjectId()
        await db.orders.insert_one(
            {
                "_id": order_id,
                "userId": "bench-user",
                "customerEmail": "bench@example.com",
                "items": [{"sku": "BENCH-SKU-1", "quantity": 2, "unitPrice": Decimal128("12.50")}],
                "total": Decimal128(Decimal("25.00")),
                "status": "created",
                "createdAt": now,
                "version": 1,
            },
            session=session,
        )
        await db[OUTBOX_COLLECTION].insert_one(
            {
                "aggregateType": AGGREGATE_ORDER,
                "aggregateId": str(order_id),
                "aggregateVersion": 1,
                "eventType": EVENT_ORDER_CREATED,
                "payload": payload,
                "status": OutboxStatus.PENDING.value,
                "attempts": 0,
                "createdAt": now,
                "publishedAt": None,
                "lastError": None,
                "traceparent": None,
            },
            session=session,
        )

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await run_in_transaction(client, work)
            latencies.append(time.perf_counter() - started)
            done += 1

    try:
        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
        await client.drop_database(RAW_DATABASE)
    finally:
        await client.close()
    return {
        "txn_per_s": round(done / elapsed, 1),
        "transactions": done,
        "concurrency": concurrency,
        **_percentiles(latencies),
    }


async def measure_api(
    api_url: str, seconds: float, concurrency: int = CONCURRENCY
) -> dict[str, Any]:
    """Orders/s (201s) of a running order API, ``concurrency`` closed-loop clients."""
    done = failed = 0
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=api_url, timeout=10.0, limits=limits) as http:
        # Warm-up: connections, Beanie, the first index pages.
        await asyncio.gather(
            *(http.post("/orders", json=order_body(i)) for i in range(concurrency))
        )
        deadline = time.monotonic() + seconds

        async def loop(worker: int) -> None:
            nonlocal done, failed
            n = worker
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await http.post("/orders", json=order_body(n))
                if response.status_code == 201:
                    latencies.append(time.perf_counter() - started)
                    done += 1
                else:
                    failed += 1
                n += concurrency

        started = time.monotonic()
        await asyncio.gather(*(loop(w) for w in range(concurrency)))
        elapsed = time.monotonic() - started
    return {
        "orders_per_s": round(done / elapsed, 1),
        "orders": done,
        "failed": failed,
        "concurrency": concurrency,
        **_percentiles(latencies),
    }


@contextlib.asynccontextmanager
async def order_api_process(mongo_uri: str, port: int) -> AsyncIterator[str]:
    """``python -m services.order`` on ``port`` against ``mongo_uri``, stopped with SIGTERM."""
    env = {
        **os.environ,
        "MONGO_URI": mongo_uri,
        "ORDER_HOST": "127.0.0.1",
        "ORDER_PORT": str(port),
        "ORDER_DATABASE": API_DATABASE,
        "LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.order", cwd=REPO_ROOT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        async with httpx.AsyncClient(base_url=url, timeout=2.0) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("order API did not become ready")
                await asyncio.sleep(0.1)  # poll interval, bounded by the deadline
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def run(mongo_uri: str, seconds: float) -> dict[str, Any]:
    """Both measurements against one MongoDB, and their ratio."""
    from stack.config import free_port

    raw = await measure_raw_txn(mongo_uri, seconds)
    cleaner = make_mongo_client(mongo_uri, 30.0, "bench-cleaner")
    await cleaner.drop_database(API_DATABASE)
    try:
        async with order_api_process(mongo_uri, free_port()) as url:
            api = await measure_api(url, seconds)
        await cleaner.drop_database(API_DATABASE)
    finally:
        await cleaner.close()
    ratio = round(api["orders_per_s"] / raw["txn_per_s"], 3) if raw["txn_per_s"] else None
    return {"raw_txn": raw, "api": api, "api_vs_raw_txn": ratio}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--mongo-uri", default=None, help="default: a fresh embedded MongoDB")
    args = parser.parse_args()
    if args.mongo_uri:
        results = asyncio.run(run(args.mongo_uri, args.seconds))
    else:
        from stack import Stack, StackConfig

        with tempfile.TemporaryDirectory(prefix="bench-order-") as root:
            stack = Stack(StackConfig.for_tests(Path(root)))
            stack.up(["mongo"])
            try:
                results = asyncio.run(run(stack.config.mongo_uri, args.seconds))
            finally:
                stack.down(wipe=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
