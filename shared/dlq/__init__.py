"""Dead-letter queue records: what a consumer writes when it gives up on a message, and how an
operator reads and replays them (``python -m shared.dlq``).

A DLQ record is the original record unchanged (key and value bytes, original headers) plus
headers saying why and where it failed: ``failureReason`` (``ExceptionType: message``),
``retryCount`` (retries made before giving up: 0 for a poison message), ``originalTopic``,
``originalPartition``, ``originalOffset``, ``consumerGroup`` and ``failedAt`` (ISO 8601 UTC).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.contracts import Header
from shared.kafka import REQUEST_TIMEOUT_MS, Headers, decode_headers, make_reader

# Headers a consumer adds to a DLQ record; a replay strips them so the republished message
# looks like the original again (plus ``replayedFrom`` and ``replayFor``).
DLQ_HEADERS = (
    Header.FAILURE_REASON,
    Header.RETRY_COUNT,
    Header.ORIGINAL_TOPIC,
    Header.ORIGINAL_PARTITION,
    Header.ORIGINAL_OFFSET,
    Header.CONSUMER_GROUP,
    Header.FAILED_AT,
)

# Redis key recording that one DLQ record was replayed: ``dlq:replayed:<dlq topic>:<p>:<o>``.
# It expires a day after the DLQ topic's retention (see ``replay_ledger_ttl``): once the record
# itself is gone it cannot be replayed again, so the key is no longer needed.
REPLAY_LEDGER_PREFIX = "dlq:replayed"
REPLAY_LEDGER_MARGIN_SECONDS = 86_400

# A failure reason is for humans; a multi-megabyte exception text would bloat every record.
MAX_REASON_CHARS = 2_000


def failure_reason(exc: BaseException) -> str:
    """``ExceptionType: message``, bounded in length."""
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]


@dataclass(frozen=True)
class OutgoingDlqRecord:
    key: bytes | None
    value: bytes | None
    headers: Headers


def build_dlq_record(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]] | None,
    reason: str,
    retry_count: int,
    consumer_group: str,
    failed_at: datetime | None = None,
) -> OutgoingDlqRecord:
    """The DLQ record for one failed source record: original key/value/headers plus the
    failure headers. Original headers that collide with a failure header are replaced (a
    replayed record that fails again gets fresh failure details)."""
    when = (failed_at or datetime.now(UTC)).astimezone(UTC).isoformat()
    extra = {
        Header.FAILURE_REASON: reason,
        Header.RETRY_COUNT: str(retry_count),
        Header.ORIGINAL_TOPIC: topic,
        Header.ORIGINAL_PARTITION: str(partition),
        Header.ORIGINAL_OFFSET: str(offset),
        Header.CONSUMER_GROUP: consumer_group,
        Header.FAILED_AT: when,
    }
    kept = [(name, raw) for name, raw in (headers or ()) if name not in extra]
    return OutgoingDlqRecord(key, value, kept + [(n, v.encode()) for n, v in extra.items()])


async def send_to_dlq(producer: AIOKafkaProducer, dlq_topic: str, record: OutgoingDlqRecord) -> Any:
    """Produce ``record`` and wait for Kafka's acknowledgement (``acks=all``).

    The caller commits the source offset only after this returns: a crash in between
    re-delivers the source record (a second DLQ copy at worst), never loses it.
    """
    return await producer.send_and_wait(
        dlq_topic, key=record.key, value=record.value, headers=record.headers
    )


@dataclass(frozen=True)
class StoredDlqRecord:
    """One record read back from the DLQ topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    raw_headers: Headers

    @property
    def ref(self) -> str:
        """``partition:offset``: how the CLI names a DLQ record."""
        return f"{self.partition}:{self.offset}"

    @property
    def headers(self) -> dict[str, str]:
        return decode_headers(self.raw_headers)

    @property
    def consumer_group(self) -> str:
        return self.headers.get(Header.CONSUMER_GROUP, "")

    @property
    def original_topic(self) -> str:
        return self.headers.get(Header.ORIGINAL_TOPIC, "")

    def replay_headers(self) -> Headers:
        """The original headers, without the failure headers, plus ``replayedFrom`` and
        ``replayFor`` (the group that failed it: every other group skips the copy)."""
        dropped = {*DLQ_HEADERS, Header.REPLAYED_FROM, Header.REPLAY_FOR}
        kept = [(name, raw) for name, raw in self.raw_headers if name not in dropped]
        return [
            *kept,
            (Header.REPLAYED_FROM, self.ref.encode()),
            (Header.REPLAY_FOR, self.consumer_group.encode()),
        ]

    def ledger_key(self) -> str:
        return f"{REPLAY_LEDGER_PREFIX}:{self.topic}:{self.ref}"


async def read_dlq(bootstrap_servers: str, dlq_topic: str) -> list[StoredDlqRecord]:
    """Every record currently in ``dlq_topic``, ordered by (partition, offset).

    Reads without a consumer group (nothing is committed): listing never changes state.
    """
    consumer = make_reader(bootstrap_servers)
    await consumer.start()
    try:
        partitions = await _partitions_of(bootstrap_servers, dlq_topic)
        tps = [TopicPartition(dlq_topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        records: list[StoredDlqRecord] = []
        pending = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1_000)
            for messages in batch.values():
                for msg in messages:
                    records.append(
                        StoredDlqRecord(
                            msg.topic,
                            msg.partition,
                            msg.offset,
                            msg.key,
                            msg.value,
                            list(msg.headers or ()),
                        )
                    )
            # read_committed may skip transaction markers, so compare positions, not offsets.
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def replay_ledger_ttl(bootstrap_servers: str, dlq_topic: str) -> int | None:
    """How long a replay ledger key must live: the DLQ topic's ``retention.ms`` plus a day, or
    ``None`` (never expire) when the topic keeps records for good or its retention is unknown.

    The ledger is what stops a second replay of the same DLQ record; while the record can still
    be read, the key must exist (the target group's 48 h dedup key may have expired by then).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=REQUEST_TIMEOUT_MS
    )
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, dlq_topic, {"retention.ms": None})
        responses = await admin.describe_configs([resource])
    finally:
        await admin.close()
    for response in responses:
        for error_code, _, _, name, entries in (r[:5] for r in response.resources):
            if error_code != 0 or name != dlq_topic:
                continue
            for entry in entries:
                if entry[0] == "retention.ms" and entry[1] is not None:
                    retention_ms = int(entry[1])
                    if retention_ms < 0:
                        return None
                    return retention_ms // 1000 + REPLAY_LEDGER_MARGIN_SECONDS
    return None


async def _partitions_of(bootstrap_servers: str, topic: str) -> list[int]:
    """Partition ids of ``topic`` (none if it does not exist). Asked of the admin API because a
    group-less consumer's metadata cache does not learn about topics it is not assigned."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=REQUEST_TIMEOUT_MS
    )
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(
        p["partition"] for t in described if t.get("error_code") == 0 for p in t["partitions"]
    )
