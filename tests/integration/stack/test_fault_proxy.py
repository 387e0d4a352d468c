"""The fault tools of the embedded stack: Toxiproxy in front of MongoDB, Kafka, Redis and SMTP
(one client's link faulted while the server serves everybody else), and pause/resume of a
component (SIGSTOP/SIGCONT)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest
import redis
from aiokafka import AIOKafkaClient, AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from shared.contracts import ORDER_CREATED_DLQ_TOPIC
from shared.kafka import make_producer
from stack import Stack, StackError
from stack.toxiproxy import Toxiproxy

TEST_DB = "fault_proxy_tests"


def _mongo(uri: str) -> MongoClient[dict[str, object]]:
    return MongoClient(uri, serverSelectionTimeoutMS=2_000, timeoutMS=3_000)


def test_the_proxy_has_one_enabled_route_per_proxied_server(
    stack: Stack, fault_proxy: Toxiproxy
) -> None:
    routes = fault_proxy.proxies()
    assert sorted(routes) == sorted(stack.config.proxied_servers)
    for server, route in routes.items():
        assert route.enabled
        assert route.listen.endswith(f":{stack.config.proxy_address(server)[1]}")
    # Kafka's proxy forwards to the broker's own proxied listener, not to the plain one.
    assert routes["kafka"].upstream.endswith(f":{stack.config.port_of('kafka_proxied')}")


def test_mongo_through_the_proxy_runs_transactions_and_change_streams_until_cut(
    stack: Stack, fault_proxy: Toxiproxy
) -> None:
    proxied_uri = stack.config.proxied_env(["mongo"])["MONGO_URI"]
    marker = uuid.uuid4().hex
    with _mongo(proxied_uri) as proxied, _mongo(stack.config.mongo_uri) as direct:
        collection = proxied[TEST_DB]["docs"]
        collection.insert_one({"_id": f"{marker}-exists"})  # the collection exists before watch
        with collection.watch([{"$match": {"operationType": "insert"}}]) as stream:
            with proxied.start_session() as session, session.start_transaction():
                collection.insert_one({"_id": marker}, session=session)
            # next() blocks until the change arrives (bounded by the client's timeoutMS).
            assert stream.next()["documentKey"] == {"_id": marker}

        fault_proxy.set_enabled("mongo", False)
        with pytest.raises(PyMongoError):
            collection.find_one({"_id": marker})
        # The server itself stays up for everybody who does not go through the proxy.
        assert direct[TEST_DB]["docs"].find_one({"_id": marker}) == {"_id": marker}
        fault_proxy.set_enabled("mongo", True)
        assert collection.find_one({"_id": marker}) == {"_id": marker}


async def test_kafka_through_the_proxy_is_told_to_stay_on_the_proxy(
    stack: Stack, fault_proxy: Toxiproxy
) -> None:
    bootstrap = stack.config.proxied_env(["kafka"])["KAFKA_BOOTSTRAP_SERVERS"]
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    await client.bootstrap()
    try:
        # Each broker advertised its own proxy's address on the listener the request came in
        # on (one broker, or every node of a cluster).
        advertised = {(broker.host, broker.port) for broker in client.cluster.brokers()}
        assert advertised == {stack.config.proxy_address(n) for n in stack.config.kafka_nodes}
    finally:
        await client.close()

    producer = make_producer(bootstrap)
    await producer.start()
    try:
        value = uuid.uuid4().hex.encode()
        sent = await producer.send_and_wait(ORDER_CREATED_DLQ_TOPIC, value=value, key=b"proxy")
        fault_proxy.set_enabled("kafka", False)
        with pytest.raises(Exception):  # noqa: B017 - any failure: the link is cut
            await asyncio.wait_for(
                producer.send_and_wait(ORDER_CREATED_DLQ_TOPIC, value=b"cut", key=b"proxy"), 5
            )
    finally:
        fault_proxy.set_enabled("kafka", True)
        await producer.stop()
    # Meanwhile the broker served a direct client: the record is there.
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.config.kafka_bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(ORDER_CREATED_DLQ_TOPIC, sent.partition)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        batch = await consumer.getmany(tp, timeout_ms=10_000)
        assert [r.value for r in batch[tp]][:1] == [value]
    finally:
        await consumer.stop()


def test_a_black_holed_redis_link_times_out_and_heals(stack: Stack, fault_proxy: Toxiproxy) -> None:
    proxied = redis.Redis.from_url(
        stack.config.proxied_env(["redis"])["REDIS_URL"], socket_timeout=1
    )
    try:
        assert proxied.ping()
        toxics = fault_proxy.black_hole("redis")
        assert sorted(fault_proxy.proxy("redis").toxics) == sorted(toxics)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            proxied.ping()
        assert time.monotonic() - started < 3
        assert redis.Redis.from_url(stack.config.redis_url, socket_timeout=1).ping()
        for name in toxics:
            fault_proxy.remove_toxic("redis", name)
        proxied.connection_pool.disconnect()
        assert proxied.ping()
    finally:
        proxied.close()


def test_latency_slows_each_round_trip_by_the_toxic(stack: Stack, fault_proxy: Toxiproxy) -> None:
    proxied = redis.Redis.from_url(
        stack.config.proxied_env(["redis"])["REDIS_URL"], socket_timeout=5
    )
    try:
        proxied.ping()
        fault_proxy.latency("redis", 150)
        started = time.monotonic()
        proxied.ping()
        # 150 ms each way.
        assert time.monotonic() - started >= 0.3
    finally:
        proxied.close()


def test_a_paused_component_holds_its_socket_and_answers_after_resume(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.config.redis_url, socket_timeout=1)
    try:
        stack.pause("redis")
        try:
            assert stack.is_paused("redis")
            assert stack.status()["redis"]["paused"]
            assert stack.is_running("redis")  # still there, just frozen
            with pytest.raises(redis.TimeoutError):
                client.ping()
        finally:
            stack.resume("redis")
        assert not stack.is_paused("redis")
        client.connection_pool.disconnect()
        assert client.ping()
    finally:
        client.close()


def test_a_paused_component_can_still_be_stopped(stack: Stack) -> None:
    stack.start("smtp")
    stack.pause("smtp")
    stack.stop("smtp", timeout=10)
    assert not stack.is_running("smtp")
    stack.start("smtp")


def test_cli_pauses_and_resumes_a_component(stack: Stack) -> None:
    env_args = ["--root", str(stack.config.root)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {
            f"STACK_{n.upper().replace('-', '_')}_PORT": str(p)
            for n, p in stack.config.ports.items()
        }
        return subprocess.run(
            [sys.executable, "-m", "stack", *env_args, *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    paused = cli("pause", "smtp")
    try:
        assert paused.returncode == 0, paused.stderr
        assert stack.is_paused("smtp")
        status = cli("status")
        assert any(line.split()[:2] == ["smtp", "paused"] for line in status.stdout.splitlines()), (
            status.stdout
        )
    finally:
        resumed = cli("resume", "smtp")
    assert resumed.returncode == 0, resumed.stderr
    assert not stack.is_paused("smtp")
    assert '"paused": false' in cli("status", "--json").stdout


def test_pause_names_a_component_that_is_not_running(stack: Stack) -> None:
    with pytest.raises(StackError, match="relay-9: is not running"):
        stack.pause("relay-9")
