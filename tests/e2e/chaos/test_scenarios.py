"""The failure-injection matrix: each scenario injects one fault while orders flow, then checks
the five invariants of :mod:`tests.e2e.chaos.invariants` (docs/proof/index.md).

The first line of each docstring is the scenario's name in the chaos report. A scenario that
needs a fault to have really happened (a failpoint hit, a duplicate published) asserts the
evidence, so a run that silently missed the fault cannot pass as a proof.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from services.email.handlers import FAILPOINT_AFTER_SMTP_OK
from services.email.handlers import SERVICE as EMAIL_SERVICE
from services.inventory.main import SERVICE as INVENTORY_SERVICE
from services.order.verdicts.main import SERVICE as VERDICTS_SERVICE
from shared.consumer import FAILPOINT_AFTER_SIDE_EFFECT
from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    EVENT_STOCK_RESERVED,
    INVENTORY_GROUP,
    INVENTORY_RESERVED_TOPIC,
    ORDER_CREATED_TOPIC,
    Header,
    idempotency_key,
)
from shared.outbox import OUTBOX_COLLECTION
from tests.e2e.chaos.harness import AMPLE_STOCK, INVENTORY_DB, ORDER_APP_NAME, Chaos
from tests.e2e.chaos.invariants import Evaluation
from tests.waiting import wait_until

pytestmark = pytest.mark.chaos

# Orders per second during a fault. Modest on purpose: on two shared cores the inventory
# consumer (one MongoDB transaction per order) handles roughly 5-15 per second, and a backlog
# that outgrows it only makes every scenario slower to settle without proving anything more.
LOAD_RATE = 4
# Orders created while the relay is stopped, drained in batches of two while Kafka is killed.
BACKLOG = 60
# Fixed by the issue: Kafka is away for 20 s, Redis for 10 s.
KAFKA_OUTAGE_SECONDS = 20.0
REDIS_OUTAGE_SECONDS = 10.0
# Not fixed by the issue; long enough for every client to notice (timeouts are 2-5 s).
MONGO_OUTAGE_SECONDS = 6.0
SMTP_OUTAGE_SECONDS = 8.0
# A dead relay leader is replaced within its lease TTL (4 s in this suite) plus one renewal
# interval; the rest is slack for a loaded two-core machine.
TAKEOVER_BUDGET_SECONDS = 10.0
# Share of orders a cancellation scenario cancels soon after creating them.
CANCEL_SHARE = 0.5


async def test_baseline(chaos: Chaos) -> None:
    """baseline, no fault"""
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(24)
    await chaos.verify()


# -- Kafka --------------------------------------------------------------------------------------


async def test_kafka_stopped_for_20s_loses_nothing(chaos: Chaos) -> None:
    """kafka stopped 20 s"""
    await _outage_while_orders_flow(chaos, "kafka", KAFKA_OUTAGE_SECONDS)


async def _outage_while_orders_flow(chaos: Chaos, component: str, seconds: float) -> None:
    """Orders flow before, during and after ``component`` is away for ``seconds``."""
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(10)
        await chaos.outage(component, seconds)
        await load.wait_more_accepted(10, within=60)
    chaos.recovered()
    await chaos.verify()


async def test_kafka_killed_mid_batch_loses_nothing(chaos: Chaos) -> None:
    """kafka SIGKILL mid-batch"""
    # A backlog published in small batches, so the broker dies with batches in flight.
    await chaos.pipeline.stop("relay")
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.burst(BACKLOG)
        order_ids = [a.order_id for a in load.attempts if a.order_id]
        # Batches of two, and no waiting for readiness: the backlog drains in a few seconds
        # and the broker must die while it does.
        await chaos.pipeline.start("relay", {"RELAY_BATCH_SIZE": "2"}, wait=False)

        async def mid_batch() -> bool:
            counts = await chaos.outbox_status_counts(order_ids)
            return 0 < counts.get("Published", 0) < len(order_ids)

        await wait_until(mid_batch, timeout=30, interval=0.02, message="relay mid-backlog")
        counts = await chaos.outbox_status_counts(order_ids)
        await chaos.kill("kafka")
        chaos.note(
            f"kafka killed with {counts.get('Published', 0)} of {len(order_ids)} "
            "backlog events published"
        )
        await chaos.start("kafka")
        await load.wait_more_accepted(10)
    chaos.recovered()
    await chaos.verify()


# -- Relay --------------------------------------------------------------------------------------


async def test_relay_killed_between_kafka_ack_and_published_mark(chaos: Chaos) -> None:
    """relay killed after ack, before mark"""
    evaluation = await _crash_at_failpoint(
        chaos, "relay", "after_kafka_ack", "failpoint after_kafka_ack"
    )
    # The proof needs the window to have been hit: the unmarked batch went out twice.
    assert evaluation.counts.relay_duplicates > 0, "nothing published twice: window missed"


async def test_relay_killed_at_random_instants(chaos: Chaos) -> None:
    """relay SIGKILL x3 at random"""
    seed = int(time.time())
    rng = random.Random(seed)
    chaos.note(f"random seed {seed}")
    async with chaos.load(rate=LOAD_RATE) as load:
        for _ in range(3):
            await load.wait_more_accepted(5)
            # The instant of the crash is the random part; the load keeps the relay busy.
            await chaos.hold(rng.uniform(0.2, 2.0))
            await chaos.kill("relay")
            await chaos.start("relay")
        await load.wait_more_accepted(10)
    chaos.recovered()
    await chaos.verify()


async def test_cancellations_racing_creations_while_the_relay_is_killed_at_random(
    chaos: Chaos,
) -> None:
    """cancels racing creations, relay SIGKILL"""
    seed = int(time.time())
    rng = random.Random(seed)
    chaos.note(f"random seed {seed}")
    # Half the orders are cancelled, from at once to a second after their 201: some cancels
    # reach the outbox before the relay saw the creation, and the two travel on two topics.
    async with chaos.load(rate=LOAD_RATE, cancel_share=CANCEL_SHARE) as load:
        for kill in range(3):
            await load.wait_more_accepted(5)
            await chaos.hold(rng.uniform(0.05, 1.5))
            await chaos.kill("relay")
            # The proof needs cancels queued behind (or next to) their creations across the
            # crash: while the relay is dead they can only accumulate.
            queued = await wait_until(
                lambda: chaos.pending_events(EVENT_ORDER_CANCELLED),
                timeout=15,
                interval=0.1,
                message="an OrderCancelled event pending while the relay is dead",
            )
            chaos.note(f"kill {kill + 1}: {queued} OrderCancelled event(s) pending")
            await chaos.start("relay")
        await load.wait_more_accepted(8)
    chaos.recovered()
    chaos.note(f"{load.cancels_accepted} cancels answered 200")
    evaluation = await chaos.verify()
    assert evaluation.counts.orders_cancelled >= 5, "too few cancellations to prove anything"


async def test_standby_relay_takes_over_when_the_leader_dies(chaos: Chaos) -> None:
    """two relays, leader killed"""
    # Both share the slots; the survivor must hold every slot (the dead one's too) in time.
    await chaos.start("relay-2")

    async def leader() -> str | None:
        for instance in ("relay", "relay-2"):
            if (
                chaos.pipeline.is_running(instance)
                and await chaos.metric(instance, "relay_is_leader") == 1.0
            ):
                return instance
        return None

    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(10)
        old = await wait_until(leader, timeout=15, message="a relay leader")
        assert old is not None
        standby = "relay-2" if old == "relay" else "relay"
        await chaos.kill(old)
        killed_at = time.monotonic()
        await wait_until(
            lambda: _is_leader(chaos, standby),
            timeout=30,
            interval=0.1,
            message=f"{standby} to take over",
        )
        takeover = time.monotonic() - killed_at
        chaos.note(f"leader {old} killed; {standby} took over in {takeover:.1f}s")
        await load.wait_more_accepted(10)
    chaos.recovered()
    await chaos.verify()
    assert takeover <= TAKEOVER_BUDGET_SECONDS, f"takeover took {takeover:.1f}s"


async def _is_leader(chaos: Chaos, instance: str) -> bool:
    """``instance`` holds every slot (with one slot: it is the leader)."""
    owned = await chaos.metric(instance, "relay_owned_slots")
    return owned is not None and owned == await chaos.metric(instance, "relay_slots_configured")


# -- Consumers ----------------------------------------------------------------------------------


async def test_inventory_killed_after_reserving_before_marking_done(chaos: Chaos) -> None:
    """inventory killed after side effect"""
    await _crash_at_failpoint(chaos, "inventory", "after_side_effect", "failpoint hit")


async def test_email_killed_after_sending_before_marking_done(chaos: Chaos) -> None:
    """email killed after side effect"""
    # The one documented window: the SMTP server said 250, the send is not recorded yet. The
    # redelivery sends a second copy (same Message-ID). The email consumer keeps one email in
    # flight (EMAIL_MAX_CONCURRENT_PARTITIONS=1), so one crash duplicates at most one email.
    chaos.expect.max_duplicate_emails = 1
    evaluation = await _crash_at_failpoint(chaos, "email", FAILPOINT_AFTER_SMTP_OK, "failpoint hit")
    assert evaluation.counts.duplicate_emails >= 1, "no second copy: the crash window was missed"


async def test_email_killed_after_recording_the_send_sends_no_copy(chaos: Chaos) -> None:
    """email killed after recording the send"""
    # Past the window: the order's state says the mail left, only `done` is missing. The
    # redelivery finds the record and sends nothing (max_duplicate_emails stays 0).
    await _crash_at_failpoint(chaos, "email", FAILPOINT_AFTER_SIDE_EFFECT, "failpoint hit")


async def _crash_at_failpoint(
    chaos: Chaos, service: str, failpoint: str, log_marker: str
) -> Evaluation:
    """Run ``service`` with a failpoint while orders flow: it exits at that instant; restart it
    without the failpoint and check the invariants."""
    await chaos.pipeline.stop(service)
    await chaos.pipeline.start(service, {f"{service.upper()}_FAILPOINT": failpoint}, wait=False)
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(5)
        await chaos.wait_exited(service)
        assert log_marker in chaos.log_of(service), f"{service} exited, not at the failpoint"
        chaos.note(f"{service} exited at failpoint {failpoint}")
        await chaos.start(service)
        await load.wait_more_accepted(10)
    chaos.recovered()
    return await chaos.verify()


async def test_second_inventory_consumer_joins_and_leaves_mid_stream(chaos: Chaos) -> None:
    """inventory rebalance (join, leave)"""
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(10)
        await chaos.start("inventory-2")
        await load.wait_more_accepted(20)
        await chaos.stop("inventory-2")
        await load.wait_more_accepted(10)
    chaos.recovered()
    await chaos.verify()


# -- Redis --------------------------------------------------------------------------------------


async def test_redis_stopped_for_10s(chaos: Chaos) -> None:
    """redis stopped 10 s"""
    await _outage_while_orders_flow(chaos, "redis", REDIS_OUTAGE_SECONDS)


async def test_redis_restart_keeps_dedup_keys(chaos: Chaos) -> None:
    """redis restarted, AOF keeps keys"""
    redis = chaos.pipeline.redis
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(10)
        # One order every consumer has finished: inventory its OrderCreated, email and the
        # order's verdict consumer its StockReserved; their keys say `done`.
        reservation = await wait_until(
            lambda: chaos.pipeline.mongo[INVENTORY_DB]["reservations"].find_one(
                {
                    "orderId": {"$in": [a.order_id for a in load.attempts if a.order_id]},
                    "status": "reserved",
                }
            ),
            timeout=30,
            message="a reservation of this scenario",
        )
        assert reservation is not None
        order_id, event_id = str(reservation["orderId"]), str(reservation["eventId"])
        verdict = await chaos.pipeline.mongo[INVENTORY_DB][OUTBOX_COLLECTION].find_one(
            {"aggregateId": order_id, "eventType": EVENT_STOCK_RESERVED}
        )
        assert verdict is not None, f"no StockReserved for {order_id} beside its reservation"
        verdict_id = str(verdict["_id"])
        keys = [
            idempotency_key(INVENTORY_SERVICE, EVENT_ORDER_CREATED, event_id),
            idempotency_key(EMAIL_SERVICE, EVENT_STOCK_RESERVED, verdict_id),
            idempotency_key(VERDICTS_SERVICE, EVENT_STOCK_RESERVED, verdict_id),
        ]
        await wait_until(lambda: _all_done(redis, keys), timeout=30, message="every key done")
        await chaos.stop("redis")
        await chaos.start("redis")
        await load.wait_more_accepted(10)
    for key in keys:
        assert await redis.get(key) == b"done", f"{key} lost across the restart"
        ttl = await redis.ttl(key)
        assert 0 < ttl <= 172_800, f"{key} has TTL {ttl}"
    chaos.note(f"keys of events {event_id} and {verdict_id} survived the restart (TTL {ttl}s)")
    # A redelivery of either event after the restart must be skipped by every consumer: the
    # invariants would count a second reservation, verdict, history step or email.
    for topic in (ORDER_CREATED_TOPIC, INVENTORY_RESERVED_TOPIC):
        await chaos.produce([await _record_of(chaos, order_id, topic)], topic)
    chaos.note("re-produced the order's OrderCreated and StockReserved once after the restart")
    chaos.recovered()
    await chaos.verify()


async def _all_done(redis: Any, keys: list[str]) -> bool:
    return all([await redis.get(k) == b"done" for k in keys])


async def _record_of(
    chaos: Chaos, order_id: str, topic: str
) -> tuple[str, bytes | None, dict[str, str]]:
    """The key, value and headers a relay published for ``order_id`` on ``topic`` (read back
    from Kafka)."""
    for record in await chaos.event_tails[topic].catch_up():
        if record.key == order_id.encode():
            headers = {n: v.decode() for n, v in record.headers or ()}
            return order_id, record.value, headers
    raise AssertionError(f"no record of order {order_id} in {topic}")


# -- MongoDB ------------------------------------------------------------------------------------


async def test_mongo_transient_commit_failures_are_retried(chaos: Chaos) -> None:
    """mongo transient commit errors"""
    before = await chaos.metric("order", "order_transaction_retries_total") or 0.0
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(5)
        await chaos.pipeline.arm_fail_command(
            app_name=ORDER_APP_NAME,
            commands=["commitTransaction"],
            error_code=251,
            labels=["TransientTransactionError"],
            times=10,
        )
        await load.wait_more_accepted(15)
    await chaos.pipeline.disarm_mongo_failpoints()
    retries = (await chaos.metric("order", "order_transaction_retries_total") or 0.0) - before
    chaos.note(f"order API retried {retries:.0f} transactions")
    chaos.recovered()
    evaluation = await chaos.verify()
    assert evaluation.counts.requests_failed == 0, "a transient commit error reached the client"
    assert retries >= 10, "the failpoint did not fire"


async def test_mongo_permanent_commit_failures_write_nothing(chaos: Chaos) -> None:
    """mongo permanent commit errors"""
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(5)
        # UnknownError (8), no label: not retryable, the request must fail whole.
        await chaos.pipeline.arm_fail_command(
            app_name=ORDER_APP_NAME,
            commands=["commitTransaction"],
            error_code=8,
            times=5,
        )
        await wait_until(
            lambda: sum(a.server_error for a in load.attempts) >= 5,
            timeout=20,
            message="five requests failed by the failpoint",
        )
        await load.wait_more_accepted(5)
    await chaos.pipeline.disarm_mongo_failpoints()
    chaos.recovered()
    evaluation = await chaos.verify()
    assert evaluation.counts.requests_failed == 5


async def test_mongo_stopped_and_started(chaos: Chaos) -> None:
    """mongo stopped and started"""
    # Requests cut off mid-commit have an unknowable outcome: such an order may exist, and
    # must then be complete like any other (checked); a refused request must leave nothing.
    chaos.expect.strict_server_errors = False
    await _outage_while_orders_flow(chaos, "mongo", MONGO_OUTAGE_SECONDS)


# -- SMTP ---------------------------------------------------------------------------------------


async def test_smtp_sink_stopped_and_started(chaos: Chaos) -> None:
    """smtp sink stopped and started"""
    await _outage_while_orders_flow(chaos, "smtp", SMTP_OUTAGE_SECONDS)


# -- Poison messages and the DLQ ----------------------------------------------------------------


def _valid_event(order_id: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schemaVersion": 1,
        "orderId": order_id,
        "userId": "poison",
        "customerEmail": "poison@example.com",
        "total": "1.00",
        "items": [{"sku": "CHAOS-A", "quantity": 1, "unitPrice": "1.00"}],
        "createdAt": datetime.now(UTC).isoformat(),
    }
    event.update(changes)
    return event


def _poison(tag: str) -> list[tuple[str, bytes | None, dict[str, str]]]:
    """One record of each kind of poison, each under its own key."""

    def headers(kind: str) -> dict[str, str]:
        return {Header.IDEMPOTENCY_KEY: f"{tag}-{kind}", Header.EVENT_TYPE: "OrderCreated"}

    kinds: dict[str, tuple[bytes | None, dict[str, str]]] = {
        "not-json": (b"\x00{not json", headers("not-json")),
        "json-array": (b"[1, 2, 3]", headers("json-array")),
        "missing-fields": (
            json.dumps({"schemaVersion": 1, "orderId": "x"}).encode(),
            headers("missing-fields"),
        ),
        "unknown-version": (
            json.dumps(_valid_event(f"{tag}-v", schemaVersion=99)).encode(),
            headers("unknown-version"),
        ),
        "ill-typed": (
            json.dumps(
                _valid_event(
                    f"{tag}-t", items=[{"sku": "CHAOS-A", "quantity": "2", "unitPrice": "1.00"}]
                )
            ).encode(),
            headers("ill-typed"),
        ),
        "tombstone": (None, headers("tombstone")),
        # A valid body without an idempotencyKey: processing it would reserve stock for an
        # order that does not exist (invariant 2 would catch that).
        "no-idempotency-key": (
            json.dumps(_valid_event(f"{tag}-k")).encode(),
            {Header.EVENT_TYPE: "OrderCreated"},
        ),
    }
    return [(f"{tag}-{kind}", value, h) for kind, (value, h) in kinds.items()]


async def test_poison_messages_go_to_the_dlq_and_a_fixed_one_replays_once(chaos: Chaos) -> None:
    """poison to DLQ, replay after fix"""
    poison = _poison(f"poison-{chaos.tag}")
    # Inventory is order.created's one consumer (email answers inventory's verdicts).
    for key, _, _ in poison:
        chaos.expect.dlq[(key, INVENTORY_GROUP)] += 1
    fragile = "CHAOS-FRAGILE"
    victim_load = chaos.load(rate=0, items=[{"sku": fragile, "quantity": 1, "unitPrice": "5.00"}])
    async with chaos.load(rate=LOAD_RATE) as load:
        await load.wait_accepted(5)
        await chaos.produce(poison)
        chaos.note(
            f"produced {len(poison)} poison records (one per kind) under keys {poison[0][0]}..."
        )
        # Good messages keep flowing behind the poison.
        await load.wait_more_accepted(10)
        # The victim: a valid order whose stock document an operator broke (not a number), so
        # reserving it raises an unexpected error, is retried 3 times, then dead-lettered.
        await chaos.pipeline.seed_stock({fragile: AMPLE_STOCK})
        await chaos.pipeline.mongo[INVENTORY_DB]["stock"].update_one(
            {"sku": fragile}, {"$set": {"available": "lots"}}
        )
        async with victim_load:
            await victim_load.burst(1)
        victim = victim_load.attempts[0].order_id
        assert victim is not None, victim_load.attempts[0].error
        chaos.expect.dlq[(victim, INVENTORY_GROUP)] += 1
        record = await chaos.dead_letter_of(victim, INVENTORY_GROUP, within=30)
        # The fix, then the replay (twice: the second must be a no-op).
        await chaos.pipeline.mongo[INVENTORY_DB]["stock"].update_one(
            {"sku": fragile}, {"$set": {"available": AMPLE_STOCK}}
        )
        await chaos.replay(record)
        await load.wait_more_accepted(5)
    chaos.recovered()
    await chaos.verify()
