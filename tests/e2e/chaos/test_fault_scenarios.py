"""Faults where every process stays alive: a process paused (SIGSTOP) past a lease or a session
timeout, a link slowed, cut or black-holed through the fault proxy, a server frozen. Each
scenario checks the five invariants of :mod:`tests.e2e.chaos.invariants`, and asserts that its
fault hit what it was aimed at (a Kafka transaction open at the instant of the pause or the cut,
partitions really moved, requests really refused).

Timings are short on purpose (leases of 4 s, a few orders per second): they change how fast the
recovery is observed, not what is guaranteed. The outage lengths the issue fixes (Kafka paused
15 s, away 60 s, MongoDB paused 8 s, latency for 20 s) are kept.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from shared.contracts import ORDER_TOPICS, TOPIC_PARTITIONS
from shared.outbox import OUTBOX_COLLECTION, OutboxField
from stack import FAULT_PROXY, Stack
from stack.toxiproxy import Toxiproxy
from tests.e2e.chaos.faults import (
    OpenTransaction,
    in_thread,
    is_leader,
    judge,
    log_since,
    log_size,
    metric,
    pause,
    proxy,
    resume,
    start_proxied,
    wait_leader,
)
from tests.e2e.chaos.harness import ORDERS_DB, Chaos
from tests.waiting import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("fault_proxy")]

LOAD_RATE = 4
# Orders cancelled soon after creation (from at once to a second after the 201): every scenario
# runs with both of an order's events flowing, on two topics.
CANCEL_SHARE = 0.3
# Fixed by the issue.
KAFKA_PAUSE_SECONDS = 15.0
KAFKA_AWAY_SECONDS = 60.0
MONGO_PAUSE_SECONDS = 8.0
LATENCY_MS = 200
LATENCY_SECONDS = 20.0
# Relay attempts before an unpublishable event is Failed, here: 3 tries x a 1 s backoff cap is far
# less than the 60 s Kafka stays away, so an outage counted as attempts would fail events.
RELAY_MAX_ATTEMPTS = 3
# The order API's database budget (ORDER_REQUEST_TIMEOUT_SECONDS default) and the slack a loaded
# two-core machine needs for the HTTP round trip around it.
ORDER_BUDGET_SECONDS = 4.0
ANSWER_SLACK_SECONDS = 1.5
# Kafka evicts a consumer that sent no heartbeat for its session timeout (aiokafka's default,
# 10 s); the pause lasts until the partitions have moved, which takes longer than that.
SESSION_TIMEOUT_SECONDS = 10.0
# Slow SMTP: a claim lease of 1 s, and every SMTP reply 200 ms late (seven replies per email).
CLAIM_LEASE_SECONDS = 1
SMTP_REPLY_DELAY_MS = 200
# The relays' slow Kafka link in the paused-leader scenario (each way), and how long a request
# sent just before the pause may still take to arrive.
KAFKA_LINK_DELAY_MS = 150
IN_TRANSIT_SECONDS = 4 * KAFKA_LINK_DELAY_MS / 1000
# Attempts at catching the relay with a Kafka transaction open (each a pause or a cut of a few
# tens of milliseconds when it misses).
CATCH_ATTEMPTS = 60


@pytest.fixture(scope="module")
def fault_proxy(stack: Stack) -> Iterator[Toxiproxy]:
    stack.start(FAULT_PROXY)
    client = stack.toxiproxy()
    client.reset()
    yield client
    client.reset()


# -- the relay ----------------------------------------------------------------------------------


# A leader and a standby exist only when there are fewer slots than relays: these scenarios
# run both relays with one slot (the order API's events beyond it are re-slotted to it by the
# relays). Many slots among many relays: test_slot_scenarios.py.
ONE_SLOT = {"RELAY_SLOTS": "1"}


async def _proxied_leader_with_standby(
    chaos: Chaos, servers: list[str], *, standby_proxied: bool = False
) -> None:
    """``relay`` leads through the fault proxy to ``servers``; ``relay-2`` stands by (direct,
    or through the same proxies with ``standby_proxied``); one slot between them."""
    # A stopped relay releases its lease, so the restarted one takes it at once.
    await start_proxied(chaos, "relay", servers, ONE_SLOT)
    await wait_leader(chaos, "relay")
    if standby_proxied:
        await start_proxied(chaos, "relay-2", servers, ONE_SLOT)
    else:
        await chaos.start("relay-2", ONE_SLOT)
    assert not await is_leader(chaos, "relay-2")


async def test_relay_leader_paused_past_its_lease_mid_batch(chaos: Chaos) -> None:
    """relay leader SIGSTOP mid-batch"""
    # Both relays reach Kafka over a slow link: a batch's transaction stays open long enough to
    # be caught, and the new leader's first Kafka call (the one that fences the old producer)
    # takes several slow round trips, so the resumed leader gets its chance to act first.
    await _proxied_leader_with_standby(chaos, ["kafka"], standby_proxied=True)
    await in_thread(proxy(chaos).latency, "kafka", KAFKA_LINK_DELAY_MS)
    rng = random.Random()
    async with (
        chaos.load(rate=LOAD_RATE, cancel_share=CANCEL_SHARE) as load,
        OpenTransaction(chaos.pipeline.bootstrap, ORDER_TOPICS) as open_txn,
    ):
        await load.wait_accepted(5)
        for _ in range(CATCH_ATTEMPTS):
            published = await metric(chaos, "relay", "relay_published_total")
            failed = await metric(chaos, "relay", "relay_events_failed_total")
            await pause(chaos, "relay")
            # A commit the leader sent just before it froze may still be on the slow link; a
            # transaction still open after that long is one the frozen leader has not
            # committed.
            await chaos.hold(IN_TRANSIT_SECONDS)
            in_flight = await open_txn.ranges()
            if in_flight:
                break
            await resume(chaos, "relay")
            await chaos.hold(rng.uniform(0.05, 0.3))
        else:
            pytest.fail(f"no batch in flight in {CATCH_ATTEMPTS} pauses of the leader")
        chaos.note(f"leader paused with an open transaction at offsets {in_flight}")
        paused_at = time.monotonic()
        await wait_leader(chaos, "relay-2")
        chaos.note(f"relay-2 took over {time.monotonic() - paused_at:.1f}s after the pause")
        offset = log_size(chaos, "relay")
        await resume(chaos, "relay")
        await wait_until(
            lambda: _stepped_down(chaos, "relay"),
            timeout=20,
            interval=0.2,
            message="the resumed leader to step down",
        )
        await load.wait_more_accepted(8)
    zombie_log = log_since(chaos, "relay", offset)
    chaos.note(f"resumed leader: {_step_down_reason(zombie_log)}")
    assert chaos.pipeline.is_running("relay"), "the resumed leader crashed"
    # Neither a Published mark nor a Failed status from the zombie: its counters did not move.
    zombie = [
        f"the resumed leader wrote {after - before:.0f} {what} status(es) after losing its lease"
        for what, series, before in (
            ("Published", "relay_published_total", published),
            ("Failed", "relay_events_failed_total", failed),
        )
        if (after := await metric(chaos, "relay", series)) != before
    ]
    chaos.recovered()
    evaluation = await chaos.settle()
    # Nor a publish: the transaction it had open when paused was aborted, never committed.
    committed = [
        f"{r.topic}/{r.partition}:{r.offset}"
        for tail in (chaos.orders_tail, chaos.cancels_tail)
        for r in tail.records
        if r.offset in in_flight.get((r.topic, r.partition), range(0))
    ]
    if committed:
        zombie.append(f"the paused leader's open transaction was committed ({committed})")
    judge(chaos, evaluation, zombie, evidence=zombie_log[-2000:])


async def _stepped_down(chaos: Chaos, instance: str) -> bool:
    return await chaos.metric(instance, "relay_is_leader") == 0.0


def _step_down_reason(log: str) -> str:
    for marker in ("fenced", "lease lost", "expired locally", "stepping down"):
        if marker in log:
            return f"stepped down ({marker!r} in its log)"
    return "stepped down"


async def test_relay_leader_partitioned_from_mongo_past_its_lease(chaos: Chaos) -> None:
    """relay leader cut from MongoDB only"""
    await _proxied_leader_with_standby(chaos, ["mongo"])
    async with chaos.load(rate=LOAD_RATE, cancel_share=CANCEL_SHARE) as load:
        await load.wait_accepted(5)
        toxics = await in_thread(proxy(chaos).black_hole, "mongo")
        cut_at = time.monotonic()
        chaos.note("relay's MongoDB link black-holed (Kafka still reachable)")
        await wait_leader(chaos, "relay-2")
        chaos.note(f"relay-2 took over {time.monotonic() - cut_at:.1f}s after the partition")
        # Whatever the old leader marks from here on would be a zombie's write.
        published = await metric(chaos, "relay", "relay_published_total")
        failed = await metric(chaos, "relay", "relay_events_failed_total")
        await load.wait_more_accepted(8)
        for name in toxics:
            await in_thread(proxy(chaos).remove_toxic, "mongo", name)
        chaos.note("partition healed")
        await wait_until(
            lambda: _stepped_down(chaos, "relay"),
            timeout=20,
            interval=0.2,
            message="the partitioned leader to step down",
        )
        assert await is_leader(chaos, "relay-2"), "the healed zombie took the lease back"
        await load.wait_more_accepted(5)
    assert await metric(chaos, "relay", "relay_published_total") == published
    assert await metric(chaos, "relay", "relay_events_failed_total") == failed
    chaos.recovered()
    await chaos.verify()


async def test_relay_kafka_link_cut_mid_transaction_three_times(chaos: Chaos) -> None:
    """relay's Kafka link cut mid-transaction x3"""
    await start_proxied(chaos, "relay", ["kafka"])
    await wait_leader(chaos, "relay")
    toxiproxy = proxy(chaos)
    await in_thread(toxiproxy.latency, "kafka", 100)
    rng = random.Random()
    cuts = 0
    async with (
        chaos.load(rate=LOAD_RATE, cancel_share=CANCEL_SHARE) as load,
        OpenTransaction(chaos.pipeline.bootstrap, ORDER_TOPICS) as open_txn,
    ):
        await load.wait_accepted(5)
        for _ in range(CATCH_ATTEMPTS):
            await wait_until(open_txn.records, timeout=20, interval=0.02, message="a batch")
            await in_thread(toxiproxy.set_enabled, "kafka", False)
            # Still open after the cut: the relay's commit never reached the broker.
            stranded = await open_txn.records()
            await in_thread(toxiproxy.set_enabled, "kafka", True)
            if stranded:
                cuts += 1
                chaos.note(f"cut #{cuts}: {stranded} record(s) of an open transaction stranded")
                if cuts == 3:
                    break
                await load.wait_more_accepted(3)
            await chaos.hold(rng.uniform(0.0, 0.2))
        assert cuts == 3, f"only {cuts} cut(s) hit an open transaction"
        await load.wait_more_accepted(8)
    chaos.recovered()
    await chaos.verify()


# -- Kafka --------------------------------------------------------------------------------------


async def test_kafka_paused_for_15s(chaos: Chaos) -> None:
    """kafka paused 15 s"""
    async with chaos.load(rate=LOAD_RATE, cancel_share=CANCEL_SHARE) as load:
        await load.wait_accepted(8)
        await pause(chaos, "kafka")
        chaos.note("kafka paused (SIGSTOP): requests time out instead of being refused")
        await chaos.hold(KAFKA_PAUSE_SECONDS)
        await resume(chaos, "kafka")
        await load.wait_more_accepted(8)
    chaos.recovered()
    await chaos.verify()


async def test_relay_kafka_link_away_for_60s_fails_no_event(chaos: Chaos) -> None:
    """relay's Kafka away 60 s"""
    await start_proxied(chaos, "relay", ["kafka"], {"RELAY_MAX_ATTEMPTS": str(RELAY_MAX_ATTEMPTS)})
    await wait_leader(chaos, "relay")
    # A slower load: a minute of orders at full rate is a backlog that only lengthens the
    # consumers' catch-up, not the proof.
    async with chaos.load(rate=1.5, cancel_share=CANCEL_SHARE) as load:
        await load.wait_accepted(3)
        await in_thread(proxy(chaos).set_enabled, "kafka", False)
        await chaos.hold(KAFKA_AWAY_SECONDS)
        await in_thread(proxy(chaos).set_enabled, "kafka", True)
        await load.wait_more_accepted(5)
    chaos.recovered()
    evaluation = await chaos.verify()
    # The proof needs the outage to have outlasted the attempts: events went through more
    # failed rounds than the limit that fails an unpublishable event, none was Failed (the
    # invariants), and no round was charged to an event's own budget.
    rounds, charged = 0, 0
    async for doc in chaos.pipeline.mongo[ORDERS_DB][OUTBOX_COLLECTION].find(
        {OutboxField.CREATED_AT: {"$gte": chaos.started_at}}
    ):
        rounds = max(rounds, int(doc.get(OutboxField.TRANSIENT_ATTEMPTS) or 0))
        charged = max(charged, int(doc.get(OutboxField.ATTEMPTS) or 0))
    chaos.note(
        f"an event went through {rounds} failed rounds, none Failed "
        f"(max attempts here: {RELAY_MAX_ATTEMPTS})"
    )
    assert rounds > RELAY_MAX_ATTEMPTS, f"events retried only {rounds} times: outage too short"
    assert charged == 0, f"the outage was charged to an event's own attempts ({charged})"
    assert evaluation.counts.events_published > 0


# -- MongoDB ------------------------------------------------------------------------------------


async def test_mongo_paused_8s_under_the_api(chaos: Chaos) -> None:
    """mongo paused 8 s under the API"""
    # A commit in flight when the server froze has an unknown outcome: the API answers 503 and
    # says so; such an order may exist and must then be complete (checked).
    chaos.expect.strict_server_errors = False
    async with chaos.load(rate=LOAD_RATE, timeout=15.0, cancel_share=CANCEL_SHARE) as load:
        await load.wait_accepted(5)
        await pause(chaos, "mongo")
        await chaos.hold(MONGO_PAUSE_SECONDS)
        await resume(chaos, "mongo")
        await load.wait_more_accepted(8)
    chaos.recovered()
    await chaos.verify()
    budget = ORDER_BUDGET_SECONDS + ANSWER_SLACK_SECONDS
    late = [a for a in chaos.attempts if not a.done or a.elapsed > budget]
    refused = [a for a in chaos.attempts if a.status == 503]
    slowest = max(a.elapsed or 0.0 for a in chaos.attempts)
    chaos.note(f"{len(refused)} requests answered 503; slowest answer {slowest:.1f}s")
    assert not late, f"{len(late)} requests over {budget:.1f}s: {late[:3]}"
    assert all(a.status in (200, 201, 503) for a in chaos.attempts), "an answer other than 503"
    # 409: the order was rejected for lack of stock (the invariants check it is).
    cancels = [a for a in chaos.attempts if a.cancel_sent]
    assert all(a.cancel_status in (200, 409, 503) for a in cancels), [
        (a.cancel_status, a.cancel_error) for a in cancels if a.cancel_status not in (200, 409, 503)
    ]
    assert refused, "no request met the frozen server"


# -- consumers ----------------------------------------------------------------------------------


async def test_inventory_paused_past_its_session_timeout(chaos: Chaos) -> None:
    """inventory paused past session timeout"""
    # Both order topics: the group's partitions all go to the one member left.
    every = TOPIC_PARTITIONS * len(ORDER_TOPICS)
    await chaos.start("inventory-2")
    async with chaos.load(rate=LOAD_RATE, cancel_share=CANCEL_SHARE) as load:
        await load.wait_accepted(8)
        offset = log_size(chaos, "inventory-2")
        await pause(chaos, "inventory")
        paused_at = time.monotonic()
        # The group evicts the silent member and gives inventory-2 every partition.
        await wait_until(
            lambda: f'"count": {every}' in _assignments(log_since(chaos, "inventory-2", offset)),
            timeout=SESSION_TIMEOUT_SECONDS + 30,
            interval=0.2,
            message="inventory-2 to receive every partition",
        )
        moved = time.monotonic() - paused_at
        chaos.note(f"inventory paused; all partitions moved to inventory-2 after {moved:.1f}s")
        await load.wait_more_accepted(4)
        await resume(chaos, "inventory")
        await load.wait_more_accepted(8)
    chaos.recovered()
    await chaos.verify()
    assert chaos.pipeline.is_running("inventory"), "the resumed consumer crashed"


def _assignments(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if "partitions assigned" in line)


async def test_slow_smtp_longer_than_the_claim_lease_with_a_rebalance(chaos: Chaos) -> None:
    """slow SMTP past the claim lease + rebalance"""
    # The documented window allows one extra copy; longer-than-lease sends must not add more.
    chaos.expect.max_duplicate_emails = 1
    slow = {
        "EMAIL_CLAIM_LEASE_SECONDS": str(CLAIM_LEASE_SECONDS),
        "EMAIL_SMTP_TIMEOUT_SECONDS": "10",
    }
    await start_proxied(chaos, "email", ["smtp"], slow)
    # Each SMTP reply late: banner, EHLO, MAIL, RCPT, DATA, end of data and QUIT add up to well
    # over the claim lease.
    await in_thread(proxy(chaos).add_toxic, "smtp", "latency", {"latency": SMTP_REPLY_DELAY_MS})
    # One order a second: every email takes longer than that, so a backlog builds for the
    # rebalance to move, without making the scenario slow.
    async with chaos.load(rate=1, cancel_share=CANCEL_SHARE) as load:
        await load.wait_accepted(3)
        await start_proxied(chaos, "email-2", ["smtp"], slow)
        await load.wait_more_accepted(3)
        await chaos.stop("email-2")
        await load.wait_more_accepted(2)
    chaos.recovered()
    evaluation = await chaos.verify()
    total = await metric(chaos, "email", "consumer_processing_seconds_sum")
    count = await metric(chaos, "email", "consumer_processing_seconds_count")
    assert count, "the slow email consumer processed nothing"
    chaos.note(
        f"an email took {total / count:.1f}s on average (claim lease {CLAIM_LEASE_SECONDS}s); "
        f"{evaluation.counts.duplicate_emails} duplicate email(s)"
    )
    # The fault must have been what the scenario says: each email outlived its claim.
    assert total / count > CLAIM_LEASE_SECONDS, "emails were not slower than the claim lease"


async def test_latency_on_every_consumer_link_for_20s(chaos: Chaos) -> None:
    """200 ms latency on consumer links 20 s"""
    for service in ("inventory", "email"):
        await start_proxied(chaos, service, ["kafka", "mongo", "redis", "smtp"])
    toxiproxy = proxy(chaos)
    async with chaos.load(rate=LOAD_RATE, cancel_share=CANCEL_SHARE) as load:
        await load.wait_accepted(5)
        toxics = {
            server: await in_thread(toxiproxy.add_toxic, server, "latency", {"latency": LATENCY_MS})
            for server in ("kafka", "mongo", "redis", "smtp")
        }
        chaos.note(f"{LATENCY_MS} ms on every reply to the consumers for {LATENCY_SECONDS:.0f}s")
        await chaos.hold(LATENCY_SECONDS)
        for server, name in toxics.items():
            await in_thread(toxiproxy.remove_toxic, server, name)
    chaos.recovered()
    await chaos.verify()
    chaos.note(f"settled {chaos.result.settle:s} after the latency ended")
