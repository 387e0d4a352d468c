"""Compose's Prometheus runs the version promtool is built from, loads deploy/prometheus (with
the alert rules) and scrapes every long-running service on the port its settings listen on (each
replica of a replicated one); its Jaeger is the release the embedded stack builds, and every
service sends it traces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stack.config import SERVICES
from stack.versions import JAEGER_IMAGE_VERSION, PROMETHEUS_MODULE_VERSION, PROMETHEUS_VERSION
from tests.unit.compose.compose_helpers import REPO, python_services, settings_class_of

Services = dict[str, dict[str, Any]]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
# Every long-running service of the stack (inventory's relay and the order service's verdict
# consumer included), each a scrape job of its own name.
SCRAPED = SERVICES


def _scrape_configs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def _scrape_targets() -> dict[str, list[str]]:
    targets: dict[str, list[str]] = {}
    for job in _scrape_configs().values():
        found = [t for static in job.get("static_configs", []) for t in static["targets"]]
        for dns in job.get("dns_sd_configs", []):
            found += [f"{name}:{dns['port']}" for name in dns["names"]]
        targets[job["job_name"]] = found
    return targets


def test_prometheus_image_is_the_release_promtool_is_built_from(services: Services) -> None:
    assert services["prometheus"]["image"] == f"prom/prometheus:v{PROMETHEUS_VERSION}"
    major, minor, patch = PROMETHEUS_VERSION.split(".")
    assert major == "3"  # 3.x tags its Go module v0.3xx.y
    assert f"v0.{int(major) * 100 + int(minor)}.{patch}" == PROMETHEUS_MODULE_VERSION


def test_prometheus_loads_the_checked_rules_and_config(services: Services) -> None:
    spec = services["prometheus"]
    mounts = {v["target"]: v for v in spec["volumes"]}
    config_mount = mounts["/etc/prometheus"]
    assert Path(config_mount["source"]) == PROMETHEUS_DIR
    assert config_mount["read_only"] is True
    assert "--config.file=/etc/prometheus/prometheus.yml" in spec["command"]


@pytest.mark.parametrize("service", SCRAPED)
def test_every_long_running_service_is_scraped_on_its_settings_port(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    spec = next(s for s in python_services(compose) if s.name == service)
    with monkeypatch.context() as patch:
        for name, value in spec.environment.items():
            patch.setenv(name, value)
        port = settings_class_of(spec.module)().port
    assert _scrape_targets()[service] == [f"{service}:{port}"]


@pytest.mark.parametrize("service", SCRAPED)
def test_each_replica_of_a_replicated_service_is_its_own_target(
    services: Services, service: str
) -> None:
    # A static target would reach one replica per scrape (the DNS name answers with any one):
    # a standby relay's relay_is_leader 0 could stand in for the leader's 1. DNS discovery lists
    # every replica's address.
    replicas = services[service].get("deploy", {}).get("replicas", 1)
    job = _scrape_configs()[service]
    assert ("dns_sd_configs" in job) == (replicas > 1), (replicas, job)


def test_jaeger_is_the_release_the_embedded_stack_builds_and_every_service_traces_to_it(
    services: Services,
) -> None:
    assert services["jaeger"]["image"] == f"jaegertracing/jaeger:{JAEGER_IMAGE_VERSION}"
    for name in SCRAPED:
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name
