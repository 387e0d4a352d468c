"""Order API phase: the API's throughput next to the raw transaction it wraps.

* ``raw_txn``: the API's own transaction issued directly with PyMongo through
  ``shared.mongo.run_in_transaction`` (majority, snapshot, with_transaction retries), 32
  concurrent loops: the same two documents (an order of two lines with an Idempotency-Key and
  its request hash, and its outbox event with a traceparent) into collections carrying the same
  indexes the API keeps (``order_indexes()``, ``outbox_indexes()``).
* ``api``: ``python -m services.order`` as a stack process, loaded two ways, each request with a
  unique Idempotency-Key and its customer's bearer token (minted before the window, so the
  figure includes the API's token validation): **wrk** (C, one thread per core, a Lua script,
  so the load generator leaves the cores to the system; the figure the ratio uses) and
  **httpx** (32 closed-loop asyncio clients in the bench's own process, for comparison). Only
  201s count.

Each figure is measured ``plan.repeats`` times; the ratio api/raw is taken run by run.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import httpx
from bson import Decimal128, ObjectId
from pymongo.asynchronous.client_session import AsyncClientSession

from bench import token_cost
from bench.run import Run
from services.order.models import order_indexes
from services.order.schemas import CreateOrderRequest, OrderStatus
from shared.contracts import AGGREGATE_ORDER, EVENT_ORDER_CREATED, OutboxStatus
from shared.mongo import ensure_indexes, make_mongo_client, run_in_transaction
from shared.outbox import DEFAULT_PUBLISHED_TTL_SECONDS, OUTBOX_COLLECTION, ensure_outbox_indexes
from stack.issuer import UserTokens

CONCURRENCY: Final = 32
WRK_THREADS: Final = 2
WRK_SCRIPT: Final = Path(__file__).with_name("wrk_post_order.lua")
API_DATABASE: Final = "bench_order_api"
# The httpx load's customers; wrk posts as the first of them (its Lua script's body).
API_USERS: Final = 1000
WRK_USER: Final = "bench-user-1"


def api_user(n: int) -> str:
    """The customer of request ``n``: the subject of the token it is sent with."""
    return f"bench-user-{n % API_USERS}"


def order_body(n: int) -> dict[str, Any]:
    """The order both load generators post (wrk's Lua script holds the same JSON)."""
    return {
        "userId": api_user(n),
        "customerEmail": f"bench{n % 1000}@example.com",
        "items": [
            {"sku": "BENCH-SKU-1", "quantity": 2, "unitPrice": "12.50"},
            {"sku": "BENCH-SKU-2", "quantity": 1, "unitPrice": "3.99"},
        ],
    }


def _raw_documents(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The order and outbox documents the API writes for ``order_body(n)`` with a key."""
    body = order_body(n)
    request = CreateOrderRequest.model_validate(body)
    now = datetime.now(UTC)
    order_id = ObjectId()
    total = request.total()
    order = {
        "_id": order_id,
        "userId": body["userId"],
        "customerEmail": body["customerEmail"],
        "items": [
            {"sku": i.sku, "quantity": i.quantity, "unitPrice": Decimal128(i.unit_price)}
            for i in request.items
        ],
        "total": Decimal128(Decimal(total)),
        "status": OrderStatus.PLACED.value,
        "createdAt": now,
        "version": 1,
        "idempotencyKey": uuid.uuid4().hex,
        "requestHash": request.fingerprint(),
    }
    event = {
        "aggregateType": AGGREGATE_ORDER,
        "aggregateId": str(order_id),
        "aggregateVersion": 1,
        "eventType": EVENT_ORDER_CREATED,
        "payload": json.dumps({**body, "orderId": str(order_id), "total": str(total)}),
        "status": OutboxStatus.PENDING.value,
        "attempts": 0,
        "createdAt": now,
        "publishedAt": None,
        "lastError": None,
        "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
    }
    return order, event


async def measure_raw_txn(
    mongo_uri: str, database: str, seconds: float, concurrency: int = CONCURRENCY
) -> dict[str, Any]:
    """Transactions/s of the API's transaction alone, ``concurrency`` loops for ``seconds``."""
    client = make_mongo_client(mongo_uri, 30.0, "bench-raw-txn")
    db = client[database]
    done = 0
    try:
        # A fresh database (the caller names it per run and drops it after, outside the window).
        await ensure_indexes(db["orders"], order_indexes())
        await ensure_outbox_indexes(db[OUTBOX_COLLECTION], DEFAULT_PUBLISHED_TTL_SECONDS)
        deadline = time.monotonic() + seconds

        async def loop(worker: int) -> None:
            nonlocal done
            n = worker
            while time.monotonic() < deadline:

                async def work(session: AsyncClientSession, n: int = n) -> None:
                    # Fresh documents per attempt, as the API builds them (a retried
                    # transaction never reuses an id minted by the aborted one).
                    order, event = _raw_documents(n)
                    await db["orders"].insert_one(order, session=session)
                    await db[OUTBOX_COLLECTION].insert_one(event, session=session)

                await run_in_transaction(client, work)
                done += 1
                n += concurrency

        started = time.monotonic()
        await asyncio.gather(*(loop(w) for w in range(concurrency)))
        elapsed = time.monotonic() - started
    finally:
        await client.close()
    return {"txn_per_s": round(done / elapsed, 1), "transactions": done, "concurrency": concurrency}


async def measure_api_httpx(
    api_url: str, seconds: float, tokens: UserTokens, concurrency: int = CONCURRENCY
) -> dict[str, Any]:
    """Orders/s (201s) of a running order API, ``concurrency`` closed-loop httpx clients, each
    request with its customer's token (all :data:`API_USERS` minted before the warm-up)."""
    tokens.mint(api_user(n) for n in range(API_USERS))
    done = failed = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=api_url, timeout=10.0, limits=limits) as http:

        async def post(n: int) -> httpx.Response:
            headers = {"Idempotency-Key": uuid.uuid4().hex, **tokens.headers(api_user(n))}
            return await http.post("/orders", json=order_body(n), headers=headers)

        # Warm-up: connections, Beanie, the first index pages.
        await asyncio.gather(*(post(i) for i in range(concurrency)))
        deadline = time.monotonic() + seconds

        async def loop(worker: int) -> None:
            nonlocal done, failed
            n = worker
            while time.monotonic() < deadline:
                if (await post(n)).status_code == 201:
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
    }


_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(ms|s|m)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(output: str) -> dict[str, Any]:
    """Orders/s from wrk's summary: requests minus non-2xx ones (and socket errors, which
    wrk does not count as requests) over the measured time."""
    total = _WRK_TOTAL.search(output)
    if total is None:
        raise ValueError(f"no request count in wrk's output: {output[-300:]!r}")
    requests = int(total.group(1))
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[total.group(3)]
    seconds = float(total.group(2)) * scale
    non_2xx = int(m.group(1)) if (m := _WRK_NON_2XX.search(output)) else 0
    errors = sum(int(g) for g in m.groups()) if (m := _WRK_ERRORS.search(output)) else 0
    ok = requests - non_2xx
    return {
        "orders_per_s": round(ok / seconds, 1) if seconds > 0 else 0.0,
        "orders": ok,
        "failed": non_2xx + errors,
        "seconds": round(seconds, 2),
    }


async def measure_api_wrk(
    api_url: str, seconds: float, tokens: UserTokens, concurrency: int = CONCURRENCY
) -> dict[str, Any] | None:
    """Orders/s by wrk with the Lua script (as :data:`WRK_USER`, its token passed to the
    script); None when wrk is not installed."""
    binary = shutil.which("wrk")
    if binary is None:
        return None
    token = tokens.token(WRK_USER)
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"-t{WRK_THREADS}",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        api_url,
        # The script's own arguments (init(args)): the bearer token. It stays out of wrk's
        # output, which the bench keeps on failure.
        "--",
        token,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {text[-300:]}")
    return {**parse_wrk(text), "concurrency": concurrency, "threads": WRK_THREADS}


async def run_phase(run: Run) -> None:
    """Raw transaction, API by wrk, API by httpx: ``plan.repeats`` times each."""
    cfg = run.config
    seconds = run.plan.throughput_seconds
    # Run i of each figure sits at index i (None: that run failed, recorded in ``failures``).
    runs: dict[str, list[dict[str, Any] | None]] = {"raw_txn": [], "api_wrk": [], "api_httpx": []}
    # What the API's bearer-token check costs per request, before any window (bench/token_cost.py).
    cost = await run.attempt("token_validation", None, token_cost.measure(cfg))
    if cost is not None:
        run.results["token_validation"] = cost
        print(f"token validation, CPU per call with the key cached: {cost}", flush=True)
    await run.start_service("order", {"ORDER_DATABASE": API_DATABASE})
    try:
        api_url = f"http://127.0.0.1:{cfg.port_of('order')}"
        for attempt in range(run.plan.repeats):
            database = f"bench_raw_txn_{run.run_id}_{attempt}"
            raw = measure_raw_txn(cfg.mongo_uri, database, seconds)
            runs["raw_txn"].append(
                await run.attempt("raw_txn", attempt, asyncio.wait_for(raw, seconds + 60))
            )
            await run.drop_database(database)
            label = f"api_{attempt}"
            recorders = run.start_profile(label, None)
            wrk = asyncio.wait_for(measure_api_wrk(api_url, seconds, run.tokens), seconds + 90)
            runs["api_wrk"].append(await run.attempt("api_wrk", attempt, wrk))
            await run.finish_profile(label, recorders)
            httpx_load = asyncio.wait_for(
                measure_api_httpx(api_url, seconds, run.tokens), seconds + 60
            )
            runs["api_httpx"].append(await run.attempt("api_httpx", attempt, httpx_load))
            print(f"order api run {attempt + 1}/{run.plan.repeats}: {runs}", flush=True)
    finally:
        run.results["order_api_runs"] = runs
        run.stop_service("order")
