"""The Debezium side-by-side phase's configuration: what Kafka Connect and the connector are told.

Pure: the live run (JVM, connector, topic) is the bench's ``debezium`` phase, not part of the
suite (it needs the Maven download and a minute of JVM start on two cores).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench.debezium import summarize
from bench.debezium_config import (
    OUTBOX_ROUTER_CLASS,
    DebeziumSetup,
    NotLoopback,
    connector_properties,
    debezium_topic,
    polling_connection_string,
    render_properties,
    worker_properties,
)
from shared.contracts import Header
from shared.kafka import TopicReplication
from stack.config import REPO_ROOT
from stack.versions import KAFKA_VERSION

MONGO_URI = "mongodb://127.0.0.1:27123/?replicaSet=rs0"
POM = REPO_ROOT / "stack" / "debezium" / "pom.xml"


def _setup(**overrides: object) -> DebeziumSetup:
    fields: dict[str, object] = {
        "mongo_uri": MONGO_URI,
        "kafka_bootstrap": "127.0.0.1:9192,127.0.0.1:9193",
        "database": "bench_debezium_x",
        "rest_port": 18083,
        "state_dir": Path("/tmp/stack/conf/debezium"),
    }
    fields.update(overrides)
    return DebeziumSetup(**fields)  # type: ignore[arg-type]


def _parse_java_properties(text: str) -> dict[str, str]:
    """Enough of java.util.Properties' reading: key up to the first unescaped '=', escapes."""
    parsed = {}
    for line in text.splitlines():
        key, value = re.split(r"(?<!\\)=", line, maxsplit=1)
        parsed[key] = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), value)
    return parsed


def test_the_connector_captures_only_the_outbox_from_now_on_through_change_streams() -> None:
    props = connector_properties(_setup())
    assert props["capture.mode"] == "change_streams"
    assert props["snapshot.mode"] == "no_data"
    assert props["collection.include.list"] == "bench_debezium_x.outbox"
    assert props["database.include.list"] == "bench_debezium_x"


def test_the_router_keys_by_aggregate_and_routes_by_event_type_to_its_own_topics() -> None:
    props = connector_properties(_setup())
    assert props["transforms"] == "outbox"
    assert props["transforms.outbox.type"] == OUTBOX_ROUTER_CLASS
    assert props["transforms.outbox.collection.field.event.key"] == "aggregateId"
    assert props["transforms.outbox.route.by.field"] == "eventType"
    assert props["transforms.outbox.collection.field.event.payload"] == "payload"
    replacement = props["transforms.outbox.route.topic.replacement"]
    assert replacement.replace("${routedByValue}", "OrderCreated") == debezium_topic("OrderCreated")
    # Never one of our relay's topics: the two designs' records must not mix.
    assert debezium_topic("OrderCreated") != "order.created"


def test_our_headers_are_placed_under_our_names() -> None:
    placement = connector_properties(_setup())[
        "transforms.outbox.collection.fields.additional.placement"
    ]
    placed = {p.split(":")[2]: p.split(":")[0] for p in placement.split(",")}
    assert all(p.split(":")[1] == "header" for p in placement.split(","))
    assert placed == {
        Header.IDEMPOTENCY_KEY: "_id",
        Header.EVENT_TYPE: "eventType",
        Header.AGGREGATE_TYPE: "aggregateType",
        Header.AGGREGATE_ID: "aggregateId",
        Header.AGGREGATE_VERSION: "aggregateVersion",
        Header.OCCURRED_AT: "createdAt",
    }


def test_the_driver_polls_the_server_instead_of_streaming_hello() -> None:
    props = connector_properties(_setup())
    uri = props["mongodb.connection.string"]
    assert uri.startswith("mongodb://127.0.0.1:27123/?")
    assert "replicaSet=rs0" in uri
    assert "serverMonitoringMode=poll" in uri
    streaming = polling_connection_string(MONGO_URI + "&serverMonitoringMode=stream")
    assert "serverMonitoringMode=stream" not in streaming
    assert streaming.count("serverMonitoringMode=") == 1


def test_topics_are_created_by_connect_with_the_stacks_replication_and_append_time() -> None:
    props = connector_properties(_setup(replication=TopicReplication.for_brokers(3)))
    assert props["topic.creation.default.replication.factor"] == "3"
    assert props["topic.creation.default.min.insync.replicas"] == "2"
    assert props["topic.creation.default.partitions"] == "6"
    assert props["topic.creation.default.message.timestamp.type"] == "LogAppendTime"
    assert worker_properties(_setup())["topic.creation.enable"] == "true"


def test_the_worker_talks_strings_and_listens_on_loopback_only() -> None:
    props = worker_properties(_setup())
    assert props["bootstrap.servers"] == "127.0.0.1:9192,127.0.0.1:9193"
    assert props["listeners"] == "http://127.0.0.1:18083"
    assert props["key.converter"].endswith("StringConverter")
    assert props["value.converter"].endswith("StringConverter")
    assert props["offset.storage.file.filename"] == "/tmp/stack/conf/debezium/connect.offsets"


@pytest.mark.parametrize(
    "override",
    [
        {"mongo_uri": "mongodb://10.0.0.5:27017/?replicaSet=rs0"},
        {"mongo_uri": "mongodb://127.0.0.1:27017,db.example.com:27017/"},
        {"kafka_bootstrap": "127.0.0.1:9092,192.168.1.2:9092"},
    ],
)
def test_an_address_off_this_machine_is_refused(override: dict[str, str]) -> None:
    with pytest.raises(NotLoopback):
        _setup(**override)


def test_rendered_properties_read_back_as_written() -> None:
    props = connector_properties(_setup())
    assert _parse_java_properties(render_properties(props)) == props


def test_the_pom_resolves_connect_at_the_stacks_kafka_version_and_the_named_debezium() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(POM).getroot()
    assert pom.findtext("m:properties/m:kafka.version", namespaces=ns) == KAFKA_VERSION
    assert pom.findtext("m:properties/m:debezium.version", namespaces=ns) == "3.6.1.Final"
    artifacts = {
        d.findtext("m:artifactId", namespaces=ns): d for d in pom.iterfind(".//m:dependency", ns)
    }
    assert "connect-runtime" in artifacts
    excluded = [
        e.findtext("m:artifactId", namespaces=ns)
        for e in artifacts["debezium-connector-mongodb"].iterfind(".//m:exclusion", ns)
    ]
    assert excluded == ["debezium-testing-testcontainers"]


def test_ratios_pair_runs_that_both_produced_a_drain() -> None:
    results = {
        "runs": {
            "relay": [{"events_per_s": 400.0}, None, {"events_per_s": 500.0}],
            "debezium": [{"events_per_s": 800.0}, {"events_per_s": 700.0}],
        },
        "latency": {
            "relay": {"p50_ms": 30.0, "p99_ms": 90.0, "missing": 0},
            "debezium": {"p50_ms": 20.0, "p99_ms": 60.0, "missing": 1},
        },
    }
    summary = summarize(results)
    # Run 2 of the relay failed (None) and run 3 of Debezium never happened: one pair is left.
    assert summary["relay_over_debezium"]["per_run"] == [0.5, None]
    assert summary["relay_events_per_s"]["median"] == 450.0
    assert summary["debezium_commit_to_publish_ms"] == {"p50": 20.0, "p99": 60.0, "missing": 1}


def test_only_the_tuned_run_changes_debeziums_batch_wait() -> None:
    assert "poll.interval.ms" not in connector_properties(_setup())
    assert connector_properties(_setup(), poll_interval_ms=10)["poll.interval.ms"] == "10"
