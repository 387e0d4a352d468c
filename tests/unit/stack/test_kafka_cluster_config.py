"""The embedded stack's Kafka cluster: node names, ports, bootstrap and each node's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.kafka import TopicReplication
from stack.config import StackConfig, kafka_node_id, kafka_node_name
from stack.supervisor import Stack, StackError, component_of


def _properties(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize(
    ("brokers", "factor", "min_insync"), [(1, 1, 1), (2, 2, 2), (3, 3, 2), (5, 3, 2)]
)
def test_replication_is_at_most_three_copies_and_a_majority_must_hold_each_write(
    brokers: int, factor: int, min_insync: int
) -> None:
    assert TopicReplication.for_brokers(brokers) == TopicReplication(factor, min_insync)


def test_a_cluster_of_no_broker_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one broker"):
        TopicReplication.for_brokers(0)


def test_the_nodes_of_a_cluster_are_kafka_then_kafka_n() -> None:
    assert [kafka_node_name(n) for n in (1, 2, 3)] == ["kafka", "kafka-2", "kafka-3"]
    assert [kafka_node_id(n) for n in ("kafka", "kafka-2", "kafka-3")] == [1, 2, 3]
    assert component_of("kafka-2") == "kafka"
    for name in ("kafka-1", "kafka-x", "kafka-10", "mongo-2", "redis-2"):
        with pytest.raises(ValueError, match=repr(name)):
            component_of(name)


def test_one_broker_stays_the_default_and_bootstraps_from_one_address(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path)
    assert config.kafka_nodes == ("kafka",)
    assert config.kafka_bootstrap == f"127.0.0.1:{config.port_of('kafka')}"
    assert config.infra_instances == ("mongo", "kafka", "redis", "smtp", "issuer")


def test_a_cluster_bootstraps_from_every_node_on_free_ports_of_its_own(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path, kafka_brokers=3)
    assert config.kafka_nodes == ("kafka", "kafka-2", "kafka-3")
    assert config.infra_instances == (
        "mongo",
        "kafka",
        "kafka-2",
        "kafka-3",
        "redis",
        "smtp",
        "issuer",
    )
    assert config.kafka_bootstrap == ",".join(
        f"127.0.0.1:{config.port_of(node)}" for node in config.kafka_nodes
    )
    assert len(set(config.ports.values())) == len(config.ports)
    assert {f"kafka-3{s}" for s in ("", "_controller", "_proxied", "_proxy")} <= set(config.ports)


def test_default_ports_of_a_cluster_are_node_ones_shifted_by_a_hundred(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("STACK_KAFKA_PORT", "STACK_KAFKA_2_PORT", "STACK_KAFKA_2_CONTROLLER_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = StackConfig.default(kafka_brokers=3)
    assert [config.port_of(n) for n in config.kafka_nodes] == [9092, 9192, 9292]
    assert config.port_of("kafka-2_controller") == 9193
    assert config.port_of("kafka-3_proxy") == 19292


def test_a_proxied_client_bootstraps_through_every_nodes_own_proxy(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path, kafka_brokers=3)
    bootstrap = config.proxied_env(["kafka"])["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap.split(",") == [
        f"127.0.0.1:{config.port_of(f'{node}_proxy')}" for node in config.kafka_nodes
    ]
    assert config.proxy_upstream("kafka-2") == ("127.0.0.1", config.port_of("kafka-2_proxied"))


def test_every_node_is_a_voter_and_replicates_every_topic_three_times(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path, kafka_brokers=3)
    stack = Stack(config)
    voters = ",".join(
        f"{n}@127.0.0.1:{config.port_of(f'{node}_controller')}"
        for n, node in enumerate(config.kafka_nodes, start=1)
    )
    for n, node in enumerate(config.kafka_nodes, start=1):
        props = _properties(stack._kafka_properties(node))
        assert props["node.id"] == str(n)
        assert props["process.roles"] == "broker,controller"
        assert props["controller.quorum.voters"] == voters
        assert props["log.dirs"] == str(config.data_dir(node))
        assert f"PLAINTEXT://127.0.0.1:{config.port_of(node)}" in props["advertised.listeners"]
        assert f"127.0.0.1:{config.port_of(f'{node}_proxy')}" in props["advertised.listeners"]
        for key in (
            "default.replication.factor",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
        ):
            assert props[key] == "3", key
        assert props["min.insync.replicas"] == "2"
        assert props["transaction.state.log.min.isr"] == "2"
        assert props["unclean.leader.election.enable"] == "false"


def test_a_single_broker_replicates_nothing(tmp_path: Path) -> None:
    props = _properties(Stack(StackConfig.for_tests(tmp_path))._kafka_properties("kafka"))
    assert props["controller.quorum.voters"].count("@") == 1
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"


def test_each_broker_of_a_cluster_gets_half_the_single_brokers_heap(tmp_path: Path) -> None:
    single = StackConfig.for_tests(tmp_path)
    cluster = StackConfig.for_tests(tmp_path, kafka_brokers=3)
    assert "-Xmx512m" in single.kafka_heap_opts
    assert "-Xmx256m" in cluster.kafka_heap_opts
    assert "-Xmx512m" not in cluster.kafka_heap_opts


def test_a_node_the_cluster_does_not_have_is_refused_by_name(tmp_path: Path) -> None:
    stack = Stack(StackConfig.for_tests(tmp_path, kafka_brokers=3))
    with pytest.raises(ValueError, match="kafka-4: this stack runs 3 Kafka broker"):
        stack.start("kafka", instance="kafka-4", wait=False)


def test_a_stack_keeps_the_cluster_size_its_kafka_was_formatted_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STACK_KAFKA_BROKERS", raising=False)
    config = StackConfig.for_tests(tmp_path, kafka_brokers=3)
    config.kafka_brokers_path.parent.mkdir(parents=True)
    config.kafka_brokers_path.write_text("3\n")
    assert StackConfig.default(root=tmp_path).kafka_brokers == 3
    (config.data_dir("kafka")).mkdir(parents=True)
    (config.data_dir("kafka") / "meta.properties").write_text("cluster.id=x\n")
    single = Stack(StackConfig.for_tests(tmp_path, kafka_brokers=1))
    with pytest.raises(StackError, match="belongs to a cluster of 3 broker"):
        single.up(["kafka"])


def test_a_kafka_node_number_is_ascii_digits() -> None:
    # "²" passes str.isdigit() and int() raises on it: the answer must still name the rule.
    with pytest.raises(ValueError, match="is not a Kafka node name"):
        kafka_node_id("kafka-\u00b2")
