"""Broker faults on a replicated Kafka: a three-node KRaft cluster (every node a broker and a
controller), topics with replication factor 3, ``min.insync.replicas`` 2, unclean leader
election off. Orders and cancellations flow while one node is SIGKILLed or SIGSTOPped; the
invariants of :mod:`tests.e2e.chaos.invariants` must hold as on one broker, and nothing may fail:
a cluster that lost one node still has a majority of every partition's replicas.

The module runs on a stack of its own with three Kafka nodes (the session's stack when the
session already runs one: ``--kafka-brokers 3``). The first line of each scenario's docstring is
its name in the chaos report.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.contracts import (
    ALL_TOPICS,
    ORDER_CREATED_TOPIC,
    TOPIC_PARTITIONS,
)
from shared.kafka import REQUEST_TIMEOUT_MS, ensure_topics, make_producer
from stack import FAULT_PROXY, Stack
from stack.config import kafka_node_id, kafka_node_name
from stack.observe import partition_leaders, partition_states
from tests.e2e.chaos.faults import metric, pause, resume
from tests.e2e.chaos.harness import Chaos
from tests.stacks import CLUSTER_BROKERS, stack_cli
from tests.waiting import wait_until

pytestmark = pytest.mark.chaos

LOAD_RATE = 4
CANCEL_SHARE = 0.3
# Fixed by the issue: one broker frozen for 20 s.
BROKER_PAUSE_SECONDS = 20.0
# A dead or frozen node is fenced by the controller quorum once its heartbeats stop for
# broker.session.timeout.ms (9 s, Kafka's default), and its partitions get new leaders then;
# the rest is slack for two loaded cores.
LEADER_MOVE_BUDGET_SECONDS = 30.0
# Events the relay must publish while a node is down, as proof that the cluster kept working
# without it (not merely that it caught up once the node was back).
PUBLISHED_WITH_A_NODE_DOWN = 8
INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")
# A leadership poll that asks the frozen node gives up after this and polls again.
POLL_TIMEOUT_MS = 2_000


@pytest.fixture(scope="module")
def stack(cluster_stack: Stack) -> Stack:
    """This module's stack: three Kafka nodes (overrides the session's one-broker ``stack``)."""
    return cluster_stack


async def _topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=REQUEST_TIMEOUT_MS)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
        )
    finally:
        await admin.close()
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for _code, _message, _type, name, entries in response.resources:
            found[name] = {entry[0]: entry[1] for entry in entries}
    return found


async def test_every_topic_of_the_cluster_has_three_replicas_and_needs_two(stack: Stack) -> None:
    """The cluster the scenarios below run on is what they claim: RF 3, min ISR 2, for our
    topics and for Kafka's internal ones (consumer offsets, transactions)."""
    bootstrap = stack.config.kafka_bootstrap
    assert len(bootstrap.split(",")) == CLUSTER_BROKERS
    # The internal topics exist once a group and a transactional producer have used them: the
    # scenarios' services do, so this is checked after the pipeline ran in the scenarios too.
    for topic in ALL_TOPICS:
        for state in (await partition_states(bootstrap, topic)).values():
            assert len(state.replicas) == CLUSTER_BROKERS, (topic, state)
            assert state.leader in state.replicas, (topic, state)
    configs = await _topic_configs(bootstrap, list(ALL_TOPICS))
    for topic in ALL_TOPICS:
        assert configs[topic]["min.insync.replicas"] == "2", topic
        assert configs[topic]["unclean.leader.election.enable"] == "false", topic


def test_one_node_is_paused_and_resumed_by_name_from_another_invocation(stack: Stack) -> None:
    """``python -m stack pause kafka-2`` reaches exactly that node of a running cluster (the
    cluster size recorded by ``up``, the pid from the node's pid file)."""
    paused = stack_cli(stack.config, "pause", "kafka-2")
    try:
        assert paused.returncode == 0, paused.stdout + paused.stderr
        status = json.loads(stack_cli(stack.config, "status", "--json").stdout)
        assert [n for n, entry in status.items() if entry["paused"]] == ["kafka-2"]
        assert {n for n in status if n.startswith("kafka")} == {"kafka", "kafka-2", "kafka-3"}
    finally:
        resumed = stack_cli(stack.config, "resume", "kafka-2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not stack.is_paused("kafka-2")


async def test_a_proxied_client_is_kept_on_every_nodes_own_proxy(stack: Stack) -> None:
    """Through the fault proxy, a client of the cluster is told each node's own proxy address
    and produces through them (the faults of test_fault_scenarios work on a cluster too)."""
    await asyncio.to_thread(stack.start, FAULT_PROXY)
    try:
        routes = await asyncio.to_thread(stack.toxiproxy().proxies)
        for node in stack.config.kafka_nodes:
            assert routes[node].upstream.endswith(f":{stack.config.port_of(f'{node}_proxied')}")
        bootstrap = stack.config.proxied_env(["kafka"])["KAFKA_BOOTSTRAP_SERVERS"]
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
        await client.bootstrap()
        try:
            advertised = {(b.host, b.port) for b in client.cluster.brokers()}
        finally:
            await client.close()
        assert advertised == {stack.config.proxy_address(n) for n in stack.config.kafka_nodes}
        topic = "stack.proxied.test"  # of its own: nothing the services read
        config = stack.config
        await ensure_topics(
            config.kafka_bootstrap, [topic], TOPIC_PARTITIONS, config.kafka_replication
        )
        producer = make_producer(bootstrap)
        await producer.start()
        try:
            # One record per partition: every partition leader is reached through its proxy.
            for partition in range(TOPIC_PARTITIONS):
                await producer.send_and_wait(topic, b"proxied", partition=partition)
        finally:
            await producer.stop()
    finally:
        await asyncio.to_thread(stack.stop, FAULT_PROXY)


async def test_partition_leader_killed_under_load_loses_nothing(chaos: Chaos) -> None:
    """kafka partition leader SIGKILL (3 brokers)"""
    await _while_a_leader_is_away(
        chaos, "killed (SIGKILL)", away=chaos.kill, back=chaos.start, for_at_least=0.0
    )
    await _assert_internal_topics_replicated(chaos.pipeline.bootstrap)


async def test_broker_paused_for_20s_loses_nothing(chaos: Chaos) -> None:
    """kafka broker paused 20 s (3 brokers)"""
    # A frozen node answers nothing: requests to it time out instead of being refused, and its
    # partitions move only once the quorum misses its heartbeats.
    await _while_a_leader_is_away(
        chaos,
        f"paused (SIGSTOP) for {BROKER_PAUSE_SECONDS:.0f}s",
        away=lambda node: pause(chaos, node),
        back=lambda node: resume(chaos, node),
        for_at_least=BROKER_PAUSE_SECONDS,
    )


async def _while_a_leader_is_away(
    chaos: Chaos,
    how: str,
    *,
    away: Callable[[str], Awaitable[None]],
    back: Callable[[str], Awaitable[None]],
    for_at_least: float,
) -> None:
    """Orders and cancels flow; the node leading the most ``order.created`` partitions is taken
    ``away`` until its partitions have new leaders and the relay published without it (and
    ``for_at_least`` seconds), then brought ``back``; then the verdict, with zero failures."""
    bootstrap = chaos.pipeline.bootstrap
    async with chaos.load(rate=LOAD_RATE, cancel_share=CANCEL_SHARE) as load:
        await load.wait_accepted(8)
        victim, led = await _busiest_leader(bootstrap)
        before = await metric(chaos, "relay", "relay_published_total")
        await away(victim)
        away_at = time.monotonic()
        chaos.note(f"{victim} {how}; it led order.created partitions {led}")
        moved = await _wait_leaders_moved(chaos, victim, led)
        chaos.note(f"their leadership moved in {moved:.1f}s")
        # The proof: the cluster kept publishing without the node, not only after its return.
        await _wait_published(chaos, before + PUBLISHED_WITH_A_NODE_DOWN, victim)
        await chaos.hold(max(0.0, for_at_least - (time.monotonic() - away_at)))
        await back(victim)
        await load.wait_more_accepted(5)
    chaos.recovered()
    await chaos.verify()
    _assert_nothing_failed(chaos)


async def _busiest_leader(bootstrap: str) -> tuple[str, list[int]]:
    """The node leading the most ``order.created`` partitions, and those partitions."""
    leaders = await partition_leaders(bootstrap, ORDER_CREATED_TOPIC)
    node, _count = Counter(leaders.values()).most_common(1)[0]
    return kafka_node_name(node), sorted(p for p, leader in leaders.items() if leader == node)


async def _wait_leaders_moved(chaos: Chaos, victim: str, partitions: list[int]) -> float:
    """Wait until every one of ``partitions`` has a leader other than ``victim``; returns how
    long that took."""
    node = kafka_node_id(victim)
    started = time.monotonic()

    async def moved() -> bool:
        leaders = await partition_leaders(
            chaos.pipeline.bootstrap, ORDER_CREATED_TOPIC, request_timeout_ms=POLL_TIMEOUT_MS
        )
        return all(leaders[p] not in (node, -1) for p in partitions)

    await wait_until(
        moved,
        timeout=LEADER_MOVE_BUDGET_SECONDS,
        interval=0.5,
        message=f"new leaders for the order.created partitions {victim} led",
    )
    return time.monotonic() - started


async def _wait_published(chaos: Chaos, total: float, victim: str) -> None:
    async def published() -> bool:
        return await metric(chaos, "relay", "relay_published_total") >= total

    await wait_until(
        published, timeout=30, interval=0.5, message=f"the relay to publish with {victim} away"
    )


def _assert_nothing_failed(chaos: Chaos) -> None:
    """Zero failed requests: the API never talks to Kafka, and one node lost stops nothing."""
    failed = [a for a in chaos.attempts if not a.accepted]
    assert not failed, f"{len(failed)} request(s) failed: {[a.error for a in failed][:3]}"
    # A 409 is the API refusing to cancel an order inventory rejected (the invariants check
    # that it is): the order's answer, not a failure.
    refused = [
        a for a in chaos.attempts if a.cancel_sent and not (a.cancel_accepted or a.cancel_refused)
    ]
    assert not refused, f"{len(refused)} cancel(s) failed: {[a.cancel_error for a in refused][:3]}"


async def _assert_internal_topics_replicated(bootstrap: str) -> None:
    """Consumer offsets and transaction state, created by the services' first use, are RF 3
    and need 2 in-sync replicas too."""
    for topic in INTERNAL_TOPICS:
        states = await partition_states(bootstrap, topic)
        assert all(len(s.replicas) == CLUSTER_BROKERS for s in states.values()), (topic, states)
    configs = await _topic_configs(bootstrap, list(INTERNAL_TOPICS))
    for topic in INTERNAL_TOPICS:
        assert configs[topic]["min.insync.replicas"] == "2", topic
