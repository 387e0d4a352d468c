"""Routing a service through the fault proxy: which addresses it is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.config import PROXIED, StackConfig


def _config() -> StackConfig:
    # One broker whatever STACK_KAFKA_BROKERS or a local `stack up --kafka-brokers` says.
    return StackConfig.default(kafka_brokers=1)


def test_proxied_mongo_is_a_direct_connection_to_the_proxy() -> None:
    config = _config()
    uri = config.proxied_env(["mongo"])["MONGO_URI"]
    # Replica-set discovery would hop from the proxy to the member address the server
    # advertises (the real port), around the fault.
    assert uri == f"mongodb://127.0.0.1:{config.port_of('mongo_proxy')}/?directConnection=true"
    assert "replicaSet" not in uri


def test_only_the_servers_asked_for_are_proxied() -> None:
    config = _config()
    env = config.proxied_env(["kafka", "smtp"])
    assert env == {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{config.port_of('kafka_proxy')}",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(config.port_of("smtp_proxy")),
    }


def test_kafka_proxy_forwards_to_the_brokers_proxied_listener() -> None:
    config = _config()
    assert config.proxy_upstream("kafka") == ("127.0.0.1", config.port_of("kafka_proxied"))
    assert config.proxy_upstream("redis") == ("127.0.0.1", config.port_of("redis"))


def test_an_unknown_server_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="no proxy for 'postgres'"):
        _config().proxied_env(["postgres"])


def test_test_stacks_give_every_proxy_its_own_free_port(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path)
    ports = [config.port_of(f"{server}_proxy") for server in PROXIED]
    ports += [config.port_of(name) for name in ("toxiproxy", "kafka_proxied", *PROXIED)]
    assert len(set(ports)) == len(ports)
