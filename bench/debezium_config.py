"""Kafka Connect standalone + Debezium's MongoDB connector, as the bench's ``debezium`` phase runs
them: the two property files, built here from the stack's addresses and nothing else (pure).

The connector is configured the way a user would set up Debezium's outbox on our collection:
change streams without a snapshot (only events written after it starts), the
``MongoEventRouter`` SMT with the record key from ``aggregateId``, the topic from ``eventType``
(behind a prefix of its own, so its records never mix with our relay's), and our headers where
the router can place them. Two settings are there because of this stack, not by taste:

* ``serverMonitoringMode=poll`` in the connection string: the Java driver's streaming ``hello``
  fails against SecantusDB ("The responseTo ... does not match the requestId"); polling is an
  ordinary driver mode that real MongoDB serves too.
* ``topic.creation.default.*``: our brokers do not create topics on first use. The topics get
  ``LogAppendTime``, so a record's timestamp is the moment Kafka appended it: that is what the
  bench calls "published".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.contracts import TOPIC_PARTITIONS, Header
from shared.kafka import SINGLE_BROKER, TopicReplication
from shared.outbox import OUTBOX_COLLECTION, OutboxField

CONNECTOR_NAME: Final = "outbox-debezium"
CONNECT_MAIN_CLASS: Final = "org.apache.kafka.connect.cli.ConnectStandalone"
MONGO_CONNECTOR_CLASS: Final = "io.debezium.connector.mongodb.MongoDbConnector"
OUTBOX_ROUTER_CLASS: Final = "io.debezium.connector.mongodb.transforms.outbox.MongoEventRouter"
STRING_CONVERTER: Final = "org.apache.kafka.connect.storage.StringConverter"
# Debezium's records go to "debezium.<eventType>", never to our relay's topics.
TOPIC_PREFIX: Final = "debezium."

# Outbox field -> Kafka header, as our relay names them (shared.contracts.Header). The router
# puts the event id (``_id``) in a header "id" of its own as well. ``traceparent`` is left out:
# the bench's documents carry none (tracing off), and our relay sends it only when it is set.
HEADER_PLACEMENT: Final = (
    (OutboxField.ID, Header.IDEMPOTENCY_KEY),
    (OutboxField.EVENT_TYPE, Header.EVENT_TYPE),
    (OutboxField.AGGREGATE_TYPE, Header.AGGREGATE_TYPE),
    (OutboxField.AGGREGATE_ID, Header.AGGREGATE_ID),
    (OutboxField.AGGREGATE_VERSION, Header.AGGREGATE_VERSION),
    (OutboxField.CREATED_AT, Header.OCCURRED_AT),
)


class NotLoopback(ValueError):
    """An address the bench must not contact: it only ever talks to this machine."""


@dataclass(frozen=True)
class DebeziumSetup:
    """Where the worker and its connector point, and where the worker keeps its state."""

    mongo_uri: str
    kafka_bootstrap: str
    database: str
    rest_port: int
    state_dir: Path
    replication: TopicReplication = SINGLE_BROKER
    partitions: int = TOPIC_PARTITIONS

    def __post_init__(self) -> None:
        require_loopback(mongo_hosts(self.mongo_uri), "mongo_uri")
        require_loopback(
            [h.rsplit(":", 1)[0] for h in self.kafka_bootstrap.split(",")], "kafka_bootstrap"
        )
        if not self.database or "." in self.database:
            raise ValueError(f"database must be a name without '.', got {self.database!r}")


def debezium_topic(event_type: str) -> str:
    """The topic the router sends an event type to: ``route.topic.replacement`` below."""
    return TOPIC_PREFIX + event_type


def mongo_hosts(uri: str) -> list[str]:
    parts = urlsplit(uri)
    if parts.scheme != "mongodb":
        raise ValueError(f"a mongodb:// connection string is needed, got {uri!r}")
    hosts = parts.netloc.rsplit("@", 1)[-1]
    return [h.rsplit(":", 1)[0].strip("[]") for h in hosts.split(",") if h]


def require_loopback(hosts: list[str], what: str) -> None:
    for host in hosts:
        if host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        raise NotLoopback(f"{what}: {host!r} is not a loopback address")
    if not hosts:
        raise NotLoopback(f"{what}: no host")


def polling_connection_string(uri: str) -> str:
    """``uri`` with ``serverMonitoringMode=poll`` (replacing any other mode it had)."""
    parts = urlsplit(uri)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "serverMonitoringMode"]
    query.append(("serverMonitoringMode", "poll"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def worker_properties(setup: DebeziumSetup) -> dict[str, str]:
    """Connect standalone's worker: strings in and out (the payload is already JSON text, the
    key is ``aggregateId``), offsets in a file flushed every second, REST on loopback."""
    return {
        "bootstrap.servers": setup.kafka_bootstrap,
        "key.converter": STRING_CONVERTER,
        "value.converter": STRING_CONVERTER,
        "offset.storage.file.filename": str(setup.state_dir / "connect.offsets"),
        # A stopped connector resumes from its last flushed resume token: flush often, so the
        # bench's stop/insert/resume drain starts where the previous one ended.
        "offset.flush.interval.ms": "1000",
        "listeners": f"http://127.0.0.1:{setup.rest_port}",
        "rest.advertised.host.name": "127.0.0.1",
        "topic.creation.enable": "true",
    }


def connector_properties(
    setup: DebeziumSetup, poll_interval_ms: int | None = None
) -> dict[str, str]:
    """Debezium's MongoDB connector on ``<database>.outbox`` with the outbox event router;
    Debezium's defaults elsewhere, except ``poll.interval.ms`` when given (its default, 500 ms,
    is how long the task waits for a batch to fill: a latency/batching trade-off a user tunes)."""
    router = "transforms.outbox."
    tuned = {} if poll_interval_ms is None else {"poll.interval.ms": str(poll_interval_ms)}
    topic_config = {
        **setup.replication.topic_config(),
        # The record's timestamp is when the broker appended it: the bench's publish time.
        "message.timestamp.type": "LogAppendTime",
    }
    return {
        "name": CONNECTOR_NAME,
        "connector.class": MONGO_CONNECTOR_CLASS,
        "tasks.max": "1",
        "mongodb.connection.string": polling_connection_string(setup.mongo_uri),
        "topic.prefix": "bench-debezium",
        "capture.mode": "change_streams",
        "snapshot.mode": "no_data",
        "database.include.list": setup.database,
        "collection.include.list": f"{setup.database}.{OUTBOX_COLLECTION}",
        "topic.creation.default.replication.factor": str(setup.replication.factor),
        "topic.creation.default.partitions": str(setup.partitions),
        **{f"topic.creation.default.{k}": v for k, v in topic_config.items()},
        "transforms": "outbox",
        router + "type": OUTBOX_ROUTER_CLASS,
        router + "collection.field.event.id": OutboxField.ID,
        router + "collection.field.event.key": OutboxField.AGGREGATE_ID,
        router + "collection.field.event.type": OutboxField.EVENT_TYPE,
        router + "collection.field.event.payload": OutboxField.PAYLOAD,
        router + "collection.fields.additional.placement": ",".join(
            f"{field}:header:{header}" for field, header in HEADER_PLACEMENT
        ),
        router + "route.by.field": OutboxField.EVENT_TYPE,
        router + "route.topic.replacement": TOPIC_PREFIX + "${routedByValue}",
        **tuned,
    }


def render_properties(properties: Mapping[str, str]) -> str:
    """Java properties text; ``\\``, ``=``, ``:`` and ``#`` in values escaped."""
    lines = []
    for key, value in properties.items():
        escaped = value.replace("\\", "\\\\").replace("\n", "\\n")
        for ch in "=:#!":
            escaped = escaped.replace(ch, "\\" + ch)
        lines.append(f"{key}={escaped}")
    return "\n".join(lines) + "\n"
