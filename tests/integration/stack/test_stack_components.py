"""The embedded stack's promises: every component is really ready, data survives stop/start and
kill/start, ``down(wipe=True)`` removes it, and a failed start names the component and its log."""

from __future__ import annotations

import asyncio
import email
import uuid
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    InvalidReplicationFactorError,
    InvalidTopicError,
    UnknownTopicOrPartitionError,
)
from aiokafka.structs import TopicPartition
from pymongo import MongoClient

from shared.contracts import ALL_TOPICS, TOPIC_PARTITIONS
from shared.kafka import TopicReplication, ensure_topics, make_producer
from stack import INFRA, Stack, StackConfig, StackError
from tests.waiting import wait_until

TEST_DB = "stack_tests"
# A topic of its own: durability records must never reach the services' consumer groups.
DURABILITY_TOPIC = "stack.durability.test"


def _mongo(stack: Stack) -> MongoClient[dict[str, object]]:
    return MongoClient(stack.config.mongo_uri, serverSelectionTimeoutMS=10_000, timeoutMS=20_000)


def _redis(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.config.redis_url, socket_timeout=10)


def test_every_infra_component_passes_its_readiness_probe(stack: Stack) -> None:
    status = stack.status(probe=True)
    for name in INFRA:
        assert status[name]["running"], status[name]
        assert status[name]["ready"], status[name]
        assert status[name]["port"] == stack.config.port_of(name)


def test_mongo_advertises_the_replica_set_and_runs_transactions(stack: Stack) -> None:
    with _mongo(stack) as client:
        assert client.admin.command("hello")["setName"] == "secantus"
        collection = client[TEST_DB]["transactions"]
        marker = uuid.uuid4().hex
        with client.start_session() as session, session.start_transaction():
            collection.insert_one({"_id": marker}, session=session)
        assert collection.find_one({"_id": marker}) == {"_id": marker}


async def test_kafka_has_the_project_topics_and_refuses_unknown_ones(stack: Stack) -> None:
    bootstrap = stack.config.kafka_bootstrap
    mistyped = f"order.craeted.{uuid.uuid4().hex[:8]}"
    # The producer's metadata requests ask the broker to auto-create: it must refuse.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait(mistyped, b"lost")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([*ALL_TOPICS, mistyped])
    finally:
        await admin.close()
    by_name = {topic["topic"]: topic for topic in described}
    for name in ALL_TOPICS:
        assert by_name[name]["error_code"] == 0, by_name[name]
        assert len(by_name[name]["partitions"]) == TOPIC_PARTITIONS
    assert by_name[mistyped]["error_code"] == UnknownTopicOrPartitionError.errno


async def test_smtp_sink_keeps_every_message_including_duplicates(stack: Stack) -> None:
    subject = f"stack test {uuid.uuid4().hex}"
    message = EmailMessage()
    message["From"] = "shop@example.com"
    message["To"] = "buyer@example.com"
    message["Subject"] = subject
    message.set_content("same message, sent twice")
    for _ in range(2):
        await aiosmtplib.send(
            message, hostname=stack.config.smtp_host, port=stack.config.smtp_port, timeout=10
        )

    def ours() -> list[Path]:
        found = []
        for path in stack.config.smtp_dir.glob("*.eml"):
            parsed = email.message_from_bytes(path.read_bytes())
            if parsed["Subject"] == subject:
                found.append(path)
        return found

    files: list[Path] = await wait_until(
        lambda: ours() if len(ours()) == 2 else [], timeout=10, message="two .eml files"
    )
    parsed = email.message_from_bytes(files[0].read_bytes())
    assert parsed["X-Envelope-To"] == "buyer@example.com"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_committed_mongo_document_survives_a_restart(stack: Stack, how: str) -> None:
    marker = uuid.uuid4().hex
    with _mongo(stack) as client:
        client[TEST_DB]["durability"].insert_one({"_id": marker, "how": how})
    getattr(stack, how)("mongo")
    assert not stack.is_running("mongo")
    stack.start("mongo")
    with _mongo(stack) as client:
        assert client[TEST_DB]["durability"].find_one({"_id": marker}) == {
            "_id": marker,
            "how": how,
        }


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_redis_key_and_its_ttl_survive_a_restart(stack: Stack, how: str) -> None:
    key = f"stack-test:{uuid.uuid4().hex}"
    client = _redis(stack)
    if how == "kill":
        # `appendfsync everysec` (the stack's setting) may lose the last second to a crash; the
        # test wants "an fsynced write survives kill -9", so it asks for fsync on every write.
        # CONFIG SET is not persisted: the restarted server is back on everysec.
        client.config_set("appendfsync", "always")
    client.set(key, "kept", ex=3600)
    client.close()
    getattr(stack, how)("redis")
    stack.start("redis")
    client = _redis(stack)
    try:
        assert client.get(key) == b"kept"
        assert 0 < int(client.ttl(key)) <= 3600  # type: ignore[arg-type]
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    finally:
        client.close()


async def test_a_topic_the_broker_refuses_is_an_error_not_a_silent_no_op(stack: Stack) -> None:
    # aiokafka answers CreateTopics with per-topic error codes instead of raising: a refused
    # topic must not pass as created.
    with pytest.raises(InvalidTopicError, match="bad topic!"):
        await ensure_topics(stack.config.kafka_bootstrap, ["bad topic!"], 1)


async def test_a_replication_the_cluster_cannot_meet_is_refused(stack: Stack) -> None:
    beyond = TopicReplication(factor=stack.config.kafka_brokers + 1, min_insync=1)
    topic = f"stack.unreplicable.{uuid.uuid4().hex[:8]}"
    with pytest.raises(InvalidReplicationFactorError, match=topic):
        await ensure_topics(stack.config.kafka_bootstrap, [topic], 1, beyond)


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_an_acknowledged_kafka_record_survives_a_restart(stack: Stack, how: str) -> None:
    bootstrap = stack.config.kafka_bootstrap
    await ensure_topics(bootstrap, [DURABILITY_TOPIC], 1)
    value = uuid.uuid4().hex.encode()
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait(DURABILITY_TOPIC, value, key=b"k")
    finally:
        await producer.stop()

    await asyncio.to_thread(getattr(stack, how), "kafka")
    await asyncio.to_thread(stack.start, "kafka")

    tp = TopicPartition(DURABILITY_TOPIC, sent.partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)

        async def fetched() -> bytes | None:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records = batch.get(tp, [])
            return records[0].value if records else None

        assert await wait_until(fetched, timeout=30, message="the record after restart") == value
    finally:
        await consumer.stop()


def test_down_with_wipe_removes_the_data(tmp_path: Path) -> None:
    private = Stack(StackConfig.for_tests(tmp_path))
    private.up(["redis"])
    try:
        client = redis.Redis(port=private.config.port_of("redis"))
        client.set("wiped", "no")
        client.close()
        private.down()
        assert any(private.config.data_dir("redis").iterdir()), "plain down keeps the data"
        private.up(["redis"])
        client = redis.Redis(port=private.config.port_of("redis"))
        assert client.get("wiped") == b"no"
        client.close()
        private.down(wipe=True)
        assert not private.config.data_root.exists()
        private.up(["redis"])
        client = redis.Redis(port=private.config.port_of("redis"))
        assert client.get("wiped") is None
        client.close()
    finally:
        private.down(wipe=True)


def test_a_component_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    private = Stack(StackConfig.for_tests(tmp_path))
    # A corrupt AOF manifest makes redis-server refuse to start: a real start-up failure.
    aof = private.config.data_dir("redis") / "appendonlydir"
    aof.mkdir(parents=True)
    (aof / "appendonly.aof.manifest").write_text("this is not a manifest\n")
    with pytest.raises(StackError) as failure:
        private.up(["redis"])
    text = str(failure.value)
    assert failure.value.component == "redis"
    assert text.startswith("redis: ")
    assert str(private.logs_path("redis")) in text
    assert "manifest" in text.lower(), "the log tail explains why"
    assert not private.is_running("redis")
