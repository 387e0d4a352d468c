"""Consumer lag as what a consumer still has to read: the one arithmetic for the console, the
stack's observers and the tests.

``end offset - committed offset`` is not that. Under ``read_committed`` the end offset is the
last stable offset, and every committed Kafka transaction (each relay batch) ends with a control
marker that occupies an offset no consumer ever receives; the consumers commit ``offset + 1`` of
the last record they handled, so a caught-up group stays one behind on every partition a
transaction wrote. Records of aborted transactions are invisible the same way.

Here the lag of a partition is the number of records a ``read_committed`` consumer would still
receive between the group's committed offset (the log start when it never committed) and the end:
exact for a gap of at most :data:`EXACT_GAP` offsets, read once per partition whatever the number
of groups; beyond that, the gap itself (an upper bound off by the markers inside it, one per
transaction). An idle, caught-up group therefore shows 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import REQUEST_TIMEOUT_MS, make_reader

# 1,000 offsets: a backlog that size is read in one or two fetches, so the exact count costs
# little; a bigger one is plainly a backlog, and its size to within the markers is enough.
EXACT_GAP: Final = 1_000
# Reading the gaps must end: a page or a settle check waits at most this long for it.
READ_SECONDS: Final = REQUEST_TIMEOUT_MS / 1000
# One fetch round while reading the gaps (a round with only markers returns no record).
_POLL_MS: Final = 100


@dataclass(frozen=True)
class GroupLag:
    """Records one consumer group still has to read on one topic, per partition."""

    group: str
    topic: str
    partitions: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.partitions.values())


def lag_of(start: int, end: int, readable: Iterable[int] | None) -> int:
    """Records still to read from ``start`` (the committed offset) up to ``end`` (exclusive).

    ``readable``: the offsets of the records a ``read_committed`` consumer receives in a range
    that covers ``[start, end)``; ``None`` when the gap was not read (then the gap itself).
    """
    if start >= end:
        return 0
    if readable is None:
        return end - start
    return sum(1 for offset in readable if start <= offset < end)


async def group_lags(
    bootstrap_servers: str,
    groups: Sequence[str],
    topics: Sequence[str],
    *,
    exact_gap: int = EXACT_GAP,
    within: float = READ_SECONDS,
) -> list[GroupLag]:
    """Each group's lag on each topic (every group is taken to read every topic), in the order
    given. Reads without joining any group and commits nothing.

    Raises ``RuntimeError`` for a topic the cluster does not have, ``TimeoutError`` when the gaps
    cannot be read within ``within`` seconds, and Kafka's errors when it cannot be reached.
    """
    committed, tps = await _committed_and_partitions(bootstrap_servers, groups, topics)
    consumer = make_reader(bootstrap_servers)
    await consumer.start()
    try:
        beginnings: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        starts = {
            group: {tp: max(beginnings[tp], committed[group].get(tp, 0)) for tp in tps}
            for group in groups
        }
        # Each partition is read once, from the earliest start among the groups whose gap is
        # small enough to count exactly.
        read_from: dict[TopicPartition, int] = {}
        for tp in tps:
            small = [s[tp] for s in starts.values() if 0 < ends[tp] - s[tp] <= exact_gap]
            if small:
                read_from[tp] = min(small)
        readable = await _readable_offsets(consumer, read_from, ends, within)
    finally:
        await consumer.stop()
    lags = []
    for group in groups:
        for topic in topics:
            partitions = {}
            for tp in (tp for tp in tps if tp.topic == topic):
                start = starts[group][tp]
                counted = tp in read_from and read_from[tp] <= start
                partitions[tp.partition] = lag_of(
                    start, ends[tp], readable.get(tp, []) if counted else None
                )
            lags.append(GroupLag(group, topic, partitions))
    return lags


async def _committed_and_partitions(
    bootstrap_servers: str, groups: Sequence[str], topics: Sequence[str]
) -> tuple[dict[str, dict[TopicPartition, int]], list[TopicPartition]]:
    """Each group's committed offsets (only real ones: -1 means none) and the topics'
    partitions, asked of the admin API (a group-less consumer's metadata does not list them)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=REQUEST_TIMEOUT_MS
    )
    await admin.start()
    try:
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in groups:
            offsets: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: int(m.offset) for tp, m in offsets.items() if m.offset >= 0}
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    found = {t["topic"]: t for t in described if t.get("error_code") == 0}
    missing = [topic for topic in topics if topic not in found]
    if missing:
        raise RuntimeError(f"no such topic: {', '.join(missing)}")
    tps = [
        TopicPartition(topic, p["partition"])
        for topic in topics
        for p in sorted(found[topic]["partitions"], key=lambda p: int(p["partition"]))
    ]
    return committed, tps


async def _readable_offsets(
    consumer: AIOKafkaConsumer,
    read_from: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    within: float,
) -> dict[TopicPartition, list[int]]:
    """Offsets of the records ``consumer`` (``read_committed``) receives in each
    ``[read_from, end)``. A marker or an aborted record moves the position without a record,
    so the reading stops on positions, not on offsets seen."""
    found: dict[TopicPartition, list[int]] = {tp: [] for tp in read_from}
    if not read_from:
        return found
    consumer.assign(list(read_from))
    for tp, offset in read_from.items():
        consumer.seek(tp, offset)
    deadline = time.monotonic() + within
    pending = set(read_from)
    while pending:
        if time.monotonic() > deadline:
            names = ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(pending))
            raise TimeoutError(f"could not read up to the end of {names} within {within:.0f} s")
        batch = await consumer.getmany(*pending, timeout_ms=_POLL_MS)
        for tp, records in batch.items():
            found[tp].extend(r.offset for r in records if r.offset < ends[tp])
        pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    return found
