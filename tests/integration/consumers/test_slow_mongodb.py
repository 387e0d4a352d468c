"""A MongoDB slower than the consumer's deadline is an outage, not a poison message: inventory
retries the records it could not finish in time, dead-letters none, and makes every reservation
once the database is fast again.

The slowness is the fault proxy's latency on inventory's MongoDB link only (Redis and Kafka stay
direct). Inventory's deadline is its client's ``timeoutMS`` (``MONGO_TIMEOUT_SECONDS``, every
operation). With a round trip between half the deadline and the deadline, an operation that
first has to open a connection has less time left than one round trip, and PyMongo refuses to
send it: ``ExecutionTimeout`` (code 50, ``.timeout``), the error a server that ran out of its
``maxTimeMS`` raises too. Longer round trips would only give connection errors, which were
always retried.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.inventory.main import run as run_inventory
from shared.contracts import Header
from stack import Stack
from stack.toxiproxy import Toxiproxy
from tests.integration.consumers.conftest import Pipeline, order_event
from tests.waiting import wait_until

# Inventory's deadline for each MongoDB operation, and the proxy's delay each way: a round trip
# of 0.7 to 1.1 s, mostly inside the deadline (the monitor keeps seeing the server) and more
# than what is left of it once a connection was opened.
DEADLINE_SECONDS = 1.0
LATENCY_MS, JITTER_MS = 450, 100
# PyMongo's minimum heartbeat: the client learns the slow round trip (the least of its last
# ten heartbeats) in seconds; with the default 10 s it takes a couple of minutes to get there.
HEARTBEAT_MS = 500
ORDERS = 12
TIMEOUT = 120


def _deadline_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The consumer's failed attempts (retried or given up) that were a MongoDB deadline."""
    reasons = [str(getattr(r, "reason", "")) for r in caplog.records]
    reasons += [repr(r.exc_info[1]) for r in caplog.records if r.exc_info]
    return [reason for reason in reasons if "ExecutionTimeout" in reason]


async def test_a_mongodb_slower_than_the_deadline_dead_letters_nothing(
    pipeline: Pipeline, stack: Stack, fault_proxy: Toxiproxy, caplog: pytest.LogCaptureFixture
) -> None:
    p = pipeline
    caplog.set_level(logging.WARNING)
    proxied = stack.config.proxied_env(["mongo"])["MONGO_URI"]
    settings = p.inventory_settings(
        # One unknown failure is enough to dead-letter: a deadline must never count as one.
        max_unknown_attempts=1,
    ).model_copy(
        update={
            "mongo_uri": f"{proxied}&heartbeatFrequencyMS={HEARTBEAT_MS}",
            "mongo_timeout_seconds": DEADLINE_SECONDS,
        }
    )
    stop = asyncio.Event()  # the fixture stops it, as the consumers it starts itself
    p.tasks["inventory"] = (asyncio.create_task(run_inventory(settings, stop=stop)), stop)
    warm = order_event()
    await p.send(warm)
    await wait_until(
        lambda: p.reservations(warm.order_id), timeout=TIMEOUT, message="the warm-up reservation"
    )

    toxics = await asyncio.to_thread(fault_proxy.latency, "mongo", LATENCY_MS, jitter=JITTER_MS)
    orders = [order_event(sku="SKU-2", quantity=1) for _ in range(ORDERS)]
    for order in orders:
        await p.send(order)

    async def deadline_met() -> bool:
        return bool(_deadline_errors(caplog)) or bool(await p.dlq(p.inventory_group))

    await wait_until(
        deadline_met, timeout=TIMEOUT, interval=0.5, message="inventory meeting its deadline"
    )
    for toxic in toxics:
        await asyncio.to_thread(fault_proxy.remove_toxic, "mongo", toxic)

    async def settled() -> bool:
        reserved = [bool(await p.reservations(o.order_id)) for o in orders]
        return all(reserved) or bool(await p.dlq(p.inventory_group))

    await wait_until(
        settled, timeout=TIMEOUT, interval=0.5, message="every reservation, or a dead letter"
    )
    dead = await p.dlq(p.inventory_group)
    assert [r.headers.get(Header.FAILURE_REASON) for r in dead] == []
    for order in orders:
        assert len(await p.reservations(order.order_id)) == 1, order.order_id
    assert await p.available("SKU-2") == 100 - ORDERS
