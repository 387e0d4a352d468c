"""Observing a running stack from outside: the mail inbox, a topic's tail, partitions (and, on a
Kafka cluster, which node leads each), offsets.

One place for what the bench, the demo and the chaos harness read to tell how far orders got:
the SMTP sink's ``.eml`` files, the records of a topic as a ``read_committed`` consumer sees
them, the end offsets of a topic and a consumer group's committed offsets, and its lag (what it
still has to read, :mod:`shared.lag`).
None of it joins a consumer group or commits anything, except :func:`position_groups_at_end`,
whose whole job is to commit.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import REQUEST_TIMEOUT_MS
from shared.lag import group_lags

# Poll interval of :func:`wait_for_topics`; the caller's ``within`` bounds the whole wait.
_METADATA_POLL_SECONDS: Final = 0.2


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (a consumer without a subscription has no metadata yet).

    Raises ``RuntimeError`` when the broker does not know the topic.
    """
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        # ``topics()`` fetches metadata without storing it, so ``partitions_for_topic`` stays
        # empty; read the partitions from a fresh metadata response instead.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(topic)
    if not partitions:
        raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


def _consumer(bootstrap: str, group: str | None = None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )


async def wait_for_topics(bootstrap: str, topics: Iterable[str], within: float) -> None:
    """Until the broker's metadata lists every topic with its partitions (a topic just created
    is not yet known to every broker's metadata); ``TimeoutError`` after ``within`` seconds."""
    consumer = _consumer(bootstrap)
    await consumer.start()
    deadline = time.monotonic() + within
    try:
        for topic in topics:
            while True:
                try:
                    await topic_partitions(consumer, topic)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"topic {topic} unknown after {within:.0f} s") from None
                    await asyncio.sleep(_METADATA_POLL_SECONDS)
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> offset the next record of ``topic`` will get (read_committed: the last
    stable offset, so records of an open transaction are not counted yet)."""
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: int(ends[tp]) for tp in tps}


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on ``topic`` (partition -> next offset to consume)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=REQUEST_TIMEOUT_MS)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


@dataclass(frozen=True)
class PartitionState:
    """Who holds one partition right now, by node id (``leader`` -1: none)."""

    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


async def partition_states(
    bootstrap: str, topic: str, *, request_timeout_ms: int = REQUEST_TIMEOUT_MS
) -> dict[int, PartitionState]:
    """Partition -> its leader, replicas and in-sync replicas, as the cluster's metadata says.

    The metadata is asked of a random live node: while one node is frozen (SIGSTOP), a short
    ``request_timeout_ms`` makes a poll that picked it fail fast instead of waiting it out.
    Raises ``RuntimeError`` when the broker does not know the topic.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = [t for t in described if t["topic"] == topic and not t["error_code"]]
    if not found or not found[0]["partitions"]:
        raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")
    return {
        p["partition"]: PartitionState(
            partition=p["partition"],
            leader=p["leader"],
            replicas=tuple(p["replicas"]),
            isr=tuple(p["isr"]),
        )
        for p in found[0]["partitions"]
    }


async def partition_leaders(
    bootstrap: str, topic: str, *, request_timeout_ms: int = REQUEST_TIMEOUT_MS
) -> dict[int, int]:
    """Partition -> node id of its leader (-1 while it has none); see :func:`partition_states`."""
    states = await partition_states(bootstrap, topic, request_timeout_ms=request_timeout_ms)
    return {p: state.leader for p, state in states.items()}


async def group_lag(bootstrap: str, group: str, topic: str) -> int:
    """How many records of ``topic`` ``group`` still has to read (:mod:`shared.lag`: the
    transaction markers after its committed offsets are not records)."""
    [lag] = await group_lags(bootstrap, [group], [topic])
    return lag.total


async def position_groups_at_end(bootstrap: str, groups: Iterable[str], topic: str) -> None:
    """Commit the end of ``topic`` for each (empty) group: a consumer of that group then starts
    with what is produced from now on, not with records earlier runs left in the topic."""
    for group in groups:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            request_timeout_ms=REQUEST_TIMEOUT_MS + 30_000,
        )
        await consumer.start()
        try:
            tps = await topic_partitions(consumer, topic)
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.commit({tp: int(ends[tp]) for tp in tps})
        finally:
            await consumer.stop()


@dataclass
class TopicTail:
    """The records of one topic from a starting point on, read incrementally.

    Reads with ``read_committed`` like the consumers: records of a Kafka transaction the relay
    aborted (a fenced zombie) are not deliveries and must not count.
    """

    bootstrap: str
    topic: str
    next_offsets: dict[int, int] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)

    async def mark_start(self) -> None:
        """From now on: remember the current end of every partition, forget older records."""
        self.next_offsets = await end_offsets(self.bootstrap, self.topic)
        self.records = []

    async def catch_up(self) -> list[Any]:
        """Read everything appended since the last call; returns all records since the start."""
        consumer = _consumer(self.bootstrap)
        await consumer.start()
        try:
            tps = await topic_partitions(consumer, self.topic)
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, self.next_offsets.get(tp.partition, 0))
            ends = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=1_000)
                for messages in batch.values():
                    self.records.extend(messages)
                # Transaction markers occupy offsets without being records: compare positions.
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
            for tp in tps:
                self.next_offsets[tp.partition] = await consumer.position(tp)
        finally:
            await consumer.stop()
        return self.records


@dataclass(frozen=True)
class Mail:
    """One message the SMTP sink stored, by its headers."""

    name: str
    # When the sink received the DATA (the ns timestamp it puts in the file name); None if the
    # name does not carry one.
    received_at: float | None
    message_id: str
    subject: str
    recipient: str


class Inbox:
    """The ``.eml`` files the SMTP sink wrote since :meth:`mark_start`, parsed once each.

    The sink writes each file under a temporary name and renames it, so a file listed here is
    complete.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._before: set[str] = set()
        self._parsed: dict[str, Mail] = {}
        self._parser = email.parser.BytesHeaderParser(policy=email.policy.default)

    def mark_start(self) -> None:
        """Ignore every message already stored."""
        self._before = set(self._names())
        self._parsed = {}

    def _names(self) -> list[str]:
        try:
            with os.scandir(self.directory) as entries:
                return sorted(e.name for e in entries if e.name.endswith(".eml"))
        except FileNotFoundError:
            return []

    def scan(self) -> list[Mail]:
        """Every message stored since :meth:`mark_start`, oldest name first."""
        for name in self._names():
            if name in self._before or name in self._parsed:
                continue
            try:
                headers = self._parser.parsebytes((self.directory / name).read_bytes())
            except OSError:
                continue  # removed under us (a wiped stack): nothing to report
            stamp = name.split("-", 1)[0]
            self._parsed[name] = Mail(
                name=name,
                received_at=int(stamp) / 1e9 if stamp.isascii() and stamp.isdigit() else None,
                message_id=str(headers.get("Message-ID", "")).strip(),
                subject=str(headers.get("Subject", "")).strip(),
                recipient=str(headers.get("To", "")).strip(),
            )
        return list(self._parsed.values())
