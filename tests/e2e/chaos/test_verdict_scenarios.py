"""The loop's own failures (issue 22): inventory's verdicts travel through inventory's outbox and
its relay (``inventory-relay``) to the order's consumer (``order-verdicts``) and to email; each
scenario breaks one link of that path while orders flow (a share of them rejected for lack of
stock, see the harness) and checks every invariant, 7 and 8 included: each order ends in one
terminal state, and the order, inventory and the customer's mails agree on it.

As elsewhere, a scenario that needs its fault to have happened asserts the evidence.
"""

from __future__ import annotations

from collections import Counter

import pytest
from bson import ObjectId

from shared.consumer import FAILPOINT_AFTER_SIDE_EFFECT
from shared.contracts import (
    EVENT_STOCK_RESERVED,
    INVENTORY_RESERVED_TOPIC,
    INVENTORY_TOPICS,
    ORDER_GROUP,
    Header,
    dlq_topic_for,
)
from shared.kafka import decode_headers
from shared.outbox import OUTBOX_COLLECTION
from tests.e2e.chaos.harness import INVENTORY_DB, ORDERS_DB, Chaos
from tests.waiting import wait_until

pytestmark = pytest.mark.chaos

# Orders per second during a fault, as in test_scenarios.py (two shared cores).
LOAD_RATE = 4
INVENTORY_RELAY = "inventory-relay"
ORDER_VERDICTS = "order-verdicts"
# Verdicts inventory wrote while its relay was dead: enough to show they waited in its outbox.
STRANDED_VERDICTS = 5
# A status no version of the order API writes: the verdict consumer fails on it (an unexpected
# error, 3 attempts) and dead-letters the verdict, like an operator's broken document.
BROKEN_STATUS = "under-repair"


async def test_inventory_and_its_relay_killed_between_the_verdicts_commit_and_publish(
    chaos: Chaos,
) -> None:
    """inventory + its relay SIGKILL"""
    async with chaos.load(rate=LOAD_RATE, cancel_share=0.2) as load:
        await load.wait_accepted(5)
        await chaos.kill(INVENTORY_RELAY)
        # Inventory keeps deciding: its verdicts commit into its outbox and wait there.
        await wait_until(
            lambda: _stranded_at_least(chaos, STRANDED_VERDICTS),
            timeout=60,
            interval=0.5,
            message=f"{STRANDED_VERDICTS} verdicts waiting in inventory's outbox",
        )
        stranded = await chaos.pending_events(EVENT_STOCK_RESERVED, INVENTORY_DB)
        # Then inventory itself dies, right after committing verdicts nobody published yet.
        await chaos.kill("inventory")
        chaos.note(f"{stranded} StockReserved events Pending in inventory's outbox at the kill")
        await load.wait_more_accepted(5)
        await chaos.start("inventory")
        await chaos.start(INVENTORY_RELAY)
        await load.wait_more_accepted(10)
    chaos.recovered()
    evaluation = await chaos.verify()
    assert evaluation.counts.orders_rejected > 0, "no order ran out of stock: the loop's other arm"


async def _stranded_at_least(chaos: Chaos, count: int) -> bool:
    return await chaos.pending_events(EVENT_STOCK_RESERVED, INVENTORY_DB) >= count


async def test_inventory_relay_killed_between_kafka_ack_and_published_mark(chaos: Chaos) -> None:
    """inventory relay killed after ack"""
    await chaos.pipeline.stop(INVENTORY_RELAY)
    await chaos.pipeline.start(INVENTORY_RELAY, {"RELAY_FAILPOINT": "after_kafka_ack"}, wait=False)
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(5)
        await chaos.wait_exited(INVENTORY_RELAY)
        log = chaos.log_of(INVENTORY_RELAY)
        assert "failpoint after_kafka_ack" in log, "inventory relay exited, not at the failpoint"
        chaos.note("inventory relay exited at failpoint after_kafka_ack")
        await chaos.start(INVENTORY_RELAY)
        await load.wait_more_accepted(10)
    chaos.recovered()
    await chaos.verify()
    # The proof needs the window hit: a verdict acknowledged by Kafka, not marked, sent again;
    # the order's consumer and email absorbed the copy (no second step, no second mail).
    again = _relayed_twice(chaos, INVENTORY_TOPICS)
    chaos.note(f"inventory events published twice: {again}")
    assert again > 0, "no inventory event published twice: window missed"


def _relayed_twice(chaos: Chaos, topics: tuple[str, ...]) -> int:
    """Records of ``topics`` the relay sent again (the same idempotencyKey twice or more)."""
    sent = Counter(
        decode_headers(record.headers).get(Header.IDEMPOTENCY_KEY)
        for topic in topics
        for record in chaos.event_tails[topic].records
    )
    return sum(n - 1 for key, n in sent.items() if key is not None and n > 1)


async def test_order_verdict_consumer_killed_mid_transition(chaos: Chaos) -> None:
    """order-verdicts killed mid-transition"""
    # The order moved and its history step is written, the dedup key still says processing:
    # the redelivery must find the step (the event id is in the history) and add none.
    variable = f"{ORDER_VERDICTS.upper().replace('-', '_')}_FAILPOINT"
    await chaos.pipeline.stop(ORDER_VERDICTS)
    await chaos.pipeline.start(ORDER_VERDICTS, {variable: FAILPOINT_AFTER_SIDE_EFFECT}, wait=False)
    async with chaos.load(rate=LOAD_RATE, cancel_share=0.3) as load:
        await load.wait_accepted(5)
        await chaos.wait_exited(ORDER_VERDICTS)
        assert "failpoint hit" in chaos.log_of(ORDER_VERDICTS), "exited, not at the failpoint"
        chaos.note(f"{ORDER_VERDICTS} exited at failpoint {FAILPOINT_AFTER_SIDE_EFFECT}")
        await chaos.start(ORDER_VERDICTS)
        await load.wait_more_accepted(10)
    chaos.recovered()
    await chaos.verify()


async def test_a_verdict_replayed_from_the_dlq_after_the_cancel_leaves_the_order_cancelled(
    chaos: Chaos,
) -> None:
    """verdict DLQ-replayed after cancel"""
    orders = chaos.pipeline.mongo[ORDERS_DB]["orders"]
    victim_load = chaos.load(rate=0)
    async with chaos.load(rate=LOAD_RATE) as load, victim_load:
        await load.wait_accepted(5)
        # Email waits too, so the verdict can reach it after the cancel as well.
        await chaos.stop(ORDER_VERDICTS)
        await chaos.stop("email")
        await victim_load.burst(1)
        [victim] = victim_load.attempts
        assert victim.order_id is not None, victim.error
        order_id = victim.order_id
        chaos.expect.dlq[(order_id, ORDER_GROUP)] += 1
        await wait_until(
            lambda: _published(chaos, order_id, INVENTORY_DB),
            timeout=30,
            interval=0.2,
            message="the victim's StockReserved published",
        )
        # An operator broke the order's document: applying the verdict fails, is tried 3
        # times, then dead-lettered.
        await orders.update_one({"_id": _oid(order_id)}, {"$set": {"status": BROKEN_STATUS}})
        await chaos.start(ORDER_VERDICTS)
        record = await chaos.dead_letter_of(order_id, ORDER_GROUP)
        # The repair, then the customer cancels the order the verdict never reached.
        await orders.update_one({"_id": _oid(order_id)}, {"$set": {"status": "placed"}})
        await victim_load.cancel(victim)
        assert victim.cancel_accepted, f"cancel answered {victim.cancel_status}"
        await chaos.start("email")
        assert record.topic == dlq_topic_for(INVENTORY_RESERVED_TOPIC), record
        await chaos.replay(record)
        # The evidence: the replayed verdict reached the order (recorded, status unchanged).
        await wait_until(
            lambda: _verdict_recorded(chaos, order_id),
            timeout=30,
            interval=0.5,
            message="the replayed verdict in the order's history",
        )
        await load.wait_more_accepted(5)
    chaos.recovered()
    await chaos.verify()
    order = await orders.find_one({"_id": _oid(order_id)})
    assert order is not None and order["status"] == "cancelled", order


async def _published(chaos: Chaos, order_id: str, database: str) -> bool:
    counts = await chaos.outbox_status_counts([order_id], database)
    return counts.get("Published", 0) > 0


async def _verdict_recorded(chaos: Chaos, order_id: str) -> bool:
    """The order's history names inventory's StockReserved of the order."""
    verdict = await chaos.pipeline.mongo[INVENTORY_DB][OUTBOX_COLLECTION].find_one(
        {"aggregateId": order_id, "eventType": EVENT_STOCK_RESERVED}, {"_id": 1}
    )
    order = await chaos.pipeline.mongo[ORDERS_DB]["orders"].find_one({"_id": _oid(order_id)})
    history = (order or {}).get("history") or []
    return verdict is not None and any(s.get("eventId") == str(verdict["_id"]) for s in history)


def _oid(order_id: str) -> ObjectId:
    return ObjectId(order_id)
