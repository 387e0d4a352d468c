"""docker-compose.yml starts what the issue promises, wired the way the embedded stack is.

Nothing here starts a container (there is no Docker engine on these machines): the file is
loaded by compose-go, the loader of docker compose itself, and its model is checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.relay.settings import RelaySettings
from shared.contracts import ALL_TOPICS, TOPIC_PARTITIONS
from shared.settings import InfraSettings, ServiceSettings
from stack.versions import KAFKA_VERSION, MONGO_IMAGE_VERSION, REDIS_VERSION
from tests.unit.compose.compose_helpers import (
    COMPOSE_FILE,
    INFRA_ENV_NAMES,
    OVERRIDE_EXAMPLE,
    REPO,
    PythonService,
    accepted_env_names,
    duration_seconds,
    env_names_read_by,
    run_validator,
    settings_class_of,
)

Services = dict[str, dict[str, Any]]

LONG_RUNNING = ("order", "relay", "inventory", "email", "inventory-relay", "order-verdicts")
INFRA_ADDRESS_VARS = ("MONGO_URI", "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "SMTP_HOST", "SMTP_PORT")


# --- the file is valid Compose ------------------------------------------------------------------


def test_compose_file_is_valid_for_the_compose_loader() -> None:
    checked = run_validator(COMPOSE_FILE)
    assert checked.returncode == 0, checked.stderr


def test_override_example_merges_into_a_valid_project() -> None:
    checked = run_validator(COMPOSE_FILE, OVERRIDE_EXAMPLE)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        ("services:\n  a:\n    image: x\n    stop_grace_periodd: 3s\n", "stop_grace_periodd"),
        (
            "services:\n  a:\n    image: x\n    depends_on:\n      b:\n"
            "        condition: service_healthy\n",
            "undefined service",
        ),
        ("services:\n  a:\n    image: x\n    volumes: [nodata:/data]\n", "undefined volume"),
    ],
    ids=["unknown-key", "unknown-dependency", "undefined-volume"],
)
def test_validator_rejects_an_invalid_compose_file(
    tmp_path: Path, broken: str, complaint: str
) -> None:
    # Proves the check above can fail: a validator that accepts anything proves nothing.
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(broken)
    checked = run_validator(bad)
    assert checked.returncode != 0
    assert complaint in checked.stderr


# --- the servers: same versions as the embedded stack ---------------------------------------------


def test_kafka_version_is_the_same_in_pom_versions_module_and_compose(services: Services) -> None:
    pom = ET.parse(REPO / "stack" / "pom.xml").getroot()
    pom_version = pom.findtext(
        "{http://maven.apache.org/POM/4.0.0}properties/"
        "{http://maven.apache.org/POM/4.0.0}kafka.version"
    )
    assert pom_version == KAFKA_VERSION, "stack/pom.xml <kafka.version> != stack/versions.py"
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["kafka-init"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_redis_and_mongo_images_match_the_versions_module(services: Services) -> None:
    assert services["redis"]["image"] == f"redis:{REDIS_VERSION}"
    assert services["mongo"]["image"] == f"mongo:{MONGO_IMAGE_VERSION}"


def test_embedded_redis_server_is_the_version_compose_runs() -> None:
    # The embedded stack runs Debian's redis-server from PATH (`make setup` installs it); a
    # Debian update that moves it away from the compose image must show up here.
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not on PATH: run `make setup`"
    shown = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    match = re.search(r"\bv=(\d+\.\d+\.\d+)", shown)
    assert match, shown
    assert match.group(1) == REDIS_VERSION, f"embedded {match.group(1)}, compose {REDIS_VERSION}"


def test_embedded_stack_has_its_server_versions_in_one_place() -> None:
    # One place for each fact: the supervisor imports stack.versions instead of repeating them.
    repeated = [
        path.relative_to(REPO).as_posix()
        for path in (REPO / "stack").rglob("*.py")
        if path.name != "versions.py" and f'"{KAFKA_VERSION}"' in path.read_text()
    ]
    assert repeated == [], f"Kafka version literal outside stack/versions.py: {repeated}"


# --- MongoDB: a replica set, initiated by the healthcheck ---------------------------------------


def _replica_set_name(uri: str) -> str | None:
    match = re.search(r"[?&]replicaSet=([^&]+)", uri)
    return match.group(1) if match else None


def test_mongo_runs_as_the_replica_set_the_services_connect_to(services: Services) -> None:
    command = services["mongo"]["command"]
    assert "--replSet" in command and "--bind_ip_all" in command
    replica_set = command[command.index("--replSet") + 1]
    script = (REPO / "docker" / "mongo" / "replica-set-healthcheck.js").read_text()
    assert f"const REPLICA_SET = '{replica_set}';" in script
    assert "const MEMBER_HOST = 'mongo:27017';" in script
    for service in LONG_RUNNING:
        uri = services[service]["environment"]["MONGO_URI"]
        assert _replica_set_name(uri) == replica_set, f"{service}: {uri}"
        assert urlsplit(uri).netloc == "mongo:27017", f"{service}: {uri}"


def test_mongo_healthcheck_initiates_the_set_and_waits_for_a_primary(services: Services) -> None:
    mongo = services["mongo"]
    test = mongo["healthcheck"]["test"]
    mounted = {v["target"]: v for v in mongo["volumes"]}
    script_path = next(arg for arg in test if arg.endswith(".js"))
    assert script_path in mounted, "the healthcheck script must be mounted into the container"
    assert Path(mounted[script_path]["source"]) == (
        REPO / "docker" / "mongo" / "replica-set-healthcheck.js"
    )
    script = Path(mounted[script_path]["source"]).read_text()
    assert "NotYetInitialized" in script and "rs.initiate(" in script
    assert "isWritablePrimary" in script


# --- Kafka: KRaft, no automatic topics, topics from shared.contracts ----------------------------


def test_kafka_is_a_single_kraft_node_without_automatic_topic_creation(services: Services) -> None:
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "PLAINTEXT://kafka:9092" in advertised
    for service in LONG_RUNNING:
        assert services[service]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_kafka_init_creates_the_contract_topics_idempotently(services: Services) -> None:
    init = services["kafka-init"]
    env = init["environment"]
    assert tuple(env["TOPICS"].split()) == ALL_TOPICS
    assert int(env["PARTITIONS"]) == TOPIC_PARTITIONS
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = (REPO / "docker" / "kafka" / "create-topics.sh").read_text()
    assert "--if-not-exists" in script
    assert {v["target"] for v in init["volumes"]} >= {"/docker/create-topics.sh"}


def test_redis_persists_with_append_only_file_synced_every_second(services: Services) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command


def test_every_server_keeps_its_data_in_a_named_volume(compose: dict[str, Any]) -> None:
    data_dirs = {
        "mongo": "/data/db",
        "kafka": compose["services"]["kafka"]["environment"]["KAFKA_LOG_DIRS"],
        "redis": "/data",
        "mailpit": "/data",
    }
    for service, data_dir in data_dirs.items():
        mounts = {v["target"]: v for v in compose["services"][service].get("volumes", [])}
        assert data_dir in mounts, f"{service}: no volume on {data_dir}"
        assert mounts[data_dir]["type"] == "volume", f"{service}: {data_dir} is not a named volume"
        assert mounts[data_dir]["source"] in compose["volumes"]


# --- the Python services: configured only through the settings classes' variables --------------


def test_every_python_service_runs_a_known_entry_point(
    python_service_list: list[PythonService],
) -> None:
    modules = {s.name: s.module for s in python_service_list}
    assert modules == {
        "order": "services.order",
        "relay": "services.relay",
        "inventory": "services.inventory",
        "inventory-seed": "services.inventory",
        "inventory-relay": "services.relay",
        "order-verdicts": "services.order.verdicts",
        "email": "services.email",
        "console": "services.console",
        "demo": "stack.demo",
    }


def test_every_service_env_var_maps_onto_a_real_settings_field(
    python_service_list: list[PythonService],
) -> None:
    for service in python_service_list:
        if service.module == "stack.demo":
            accepted = INFRA_ENV_NAMES
        else:
            accepted = env_names_read_by(service.module)
        unknown = {name for name in service.environment if name.upper() not in accepted}
        assert unknown == set(), (
            f"{service.name}: {sorted(unknown)} are read by no settings field "
            f"(accepted: {sorted(accepted)})"
        )


def _settings_from_compose(
    service: PythonService, monkeypatch: pytest.MonkeyPatch
) -> ServiceSettings:
    """Build the service's settings exactly as its container would: from the compose env only."""
    settings_class = settings_class_of(service.module)
    with monkeypatch.context() as patch:
        for name in accepted_env_names(settings_class):
            patch.delenv(name, raising=False)
            patch.delenv(name.lower(), raising=False)
        for name, value in service.environment.items():
            patch.setenv(name, value)
        return settings_class()


def test_compose_env_values_are_accepted_by_the_settings_classes(
    python_service_list: list[PythonService], monkeypatch: pytest.MonkeyPatch
) -> None:
    for service in python_service_list:
        if service.module == "stack.demo":
            continue
        settings = _settings_from_compose(service, monkeypatch)
        assert settings.mongo_uri == service.environment["MONGO_URI"]
        assert settings.kafka_bootstrap_servers == service.environment["KAFKA_BOOTSTRAP_SERVERS"]
        assert settings.redis_url == service.environment["REDIS_URL"]
        assert settings.smtp_host == service.environment["SMTP_HOST"]


def test_every_python_service_is_told_where_every_server_is(
    python_service_list: list[PythonService],
) -> None:
    # The settings' defaults point at 127.0.0.1 (the embedded stack); inside a container that is
    # the container itself, so a forgotten variable would fail at run time, not here.
    defaults = InfraSettings.model_fields
    assert defaults["mongo_uri"].default.startswith("mongodb://127.0.0.1")
    for service in python_service_list:
        if service.module == "stack.demo":
            continue
        missing = [v for v in INFRA_ADDRESS_VARS if v not in service.environment]
        assert missing == [], f"{service.name} does not set {missing}"


def test_long_running_services_listen_on_all_interfaces_and_probe_their_readyz(
    python_service_list: list[PythonService], monkeypatch: pytest.MonkeyPatch
) -> None:
    for service in python_service_list:
        if service.name not in LONG_RUNNING:
            continue
        settings = _settings_from_compose(service, monkeypatch)
        # 127.0.0.1 inside a container is unreachable from the other containers.
        assert settings.host == "0.0.0.0", f"{service.name} binds {settings.host}"
        probe = service.spec["healthcheck"]["test"]
        assert probe[0] == "CMD" and probe[1] == "python", f"{service.name}: {probe}"
        assert probe[-1] == f"http://127.0.0.1:{settings.port}/readyz", f"{service.name}: {probe}"


def test_stop_grace_period_is_a_little_longer_than_the_drain_budget(
    python_service_list: list[PythonService], monkeypatch: pytest.MonkeyPatch
) -> None:
    for service in python_service_list:
        if service.name not in LONG_RUNNING:
            continue
        drain = _settings_from_compose(service, monkeypatch).drain_seconds
        grace = duration_seconds(service.spec["stop_grace_period"])
        # Docker sends SIGKILL when the grace period ends: shorter would cut a clean drain short,
        # much longer only delays `docker compose down` for a process that is stuck anyway.
        assert drain < grace <= drain + 10, f"{service.name}: drain {drain}s, grace {grace}s"


def test_relay_runs_three_replicas_sharing_the_slots(services: Services) -> None:
    relay = services["relay"]
    assert relay["deploy"]["replicas"] == 3
    # A fixed container name or a published port would make `--scale relay=3` fail.
    assert "container_name" not in relay
    assert not relay.get("ports")


def test_inventory_has_relays_of_its_own_on_its_database(
    python_service_list: list[PythonService], monkeypatch: pytest.MonkeyPatch
) -> None:
    relays = {s.name: s for s in python_service_list if s.module == "services.relay"}
    order = _settings_from_compose(relays["relay"], monkeypatch)
    inventory = _settings_from_compose(relays["inventory-relay"], monkeypatch)
    assert isinstance(order, RelaySettings) and isinstance(inventory, RelaySettings)
    assert (order.database, inventory.database) == ("orders", "inventory")
    # Sharing one would make slot n of each outbox's relays fence the other's producer.
    assert order.transactional_id != inventory.transactional_id
    spec = relays["inventory-relay"].spec
    assert spec["deploy"]["replicas"] >= 2
    assert "container_name" not in spec and not spec.get("ports")


def test_inventory_stock_is_seeded_from_the_demo_catalogue(
    python_service_list: list[PythonService],
) -> None:
    seed = next(s for s in python_service_list if s.name == "inventory-seed")
    assert seed.arguments[0] == "seed-stock"
    assert (REPO / seed.arguments[1]).is_file(), f"{seed.arguments[1]} does not exist"


# --- published ports: 127.0.0.1 only, and only the API and the inbox ---------------------------


def _published(model: dict[str, Any]) -> dict[tuple[str, int], str]:
    return {
        (name, int(port["target"])): port.get("host_ip", "")
        for name, spec in model["services"].items()
        for port in spec.get("ports") or []
    }


def test_only_the_user_facing_ports_are_published_on_loopback(
    compose: dict[str, Any],
) -> None:
    assert _published(compose) == {
        ("order", 8000): "127.0.0.1",
        ("console", 8004): "127.0.0.1",
        ("mailpit", 8025): "127.0.0.1",
        ("prometheus", 9090): "127.0.0.1",
        ("jaeger", 16686): "127.0.0.1",
        ("keycloak", 8080): "127.0.0.1",
    }


def test_override_publishes_the_servers_on_loopback_only(
    compose_with_override: dict[str, Any],
) -> None:
    published = _published(compose_with_override)
    assert {name for name, _ in published} == {
        "order",
        "console",
        "mailpit",
        "prometheus",
        "jaeger",
        "keycloak",
        "mongo",
        "kafka",
        "redis",
    }
    assert set(published.values()) == {"127.0.0.1"}


# --- the demo: starts last, talks to the same addresses as the services -------------------------


def test_demo_waits_for_every_service_to_be_healthy(services: Services) -> None:
    depends = services["demo"]["depends_on"]
    for service in (*LONG_RUNNING, "mailpit"):
        assert depends[service]["condition"] == "service_healthy", service
        assert "healthcheck" in services[service], f"{service} has no healthcheck to wait for"
    assert depends["inventory-seed"]["condition"] == "service_completed_successfully"


def demo_options(services: Services) -> dict[str, str | None]:
    """The demo's command-line options: {"--order-url": "http://order:8000", "--external": None}."""
    args = services["demo"]["command"][3:]
    options: dict[str, str | None] = {}
    for index, arg in enumerate(args):
        if arg.startswith("--"):
            following = args[index + 1] if index + 1 < len(args) else None
            options[arg] = None if following is None or following.startswith("--") else following
    return options


def test_demo_uses_the_same_addresses_as_the_services(services: Services) -> None:
    options = demo_options(services)
    order_env = services["order"]["environment"]
    assert options["--mongo-uri"] == order_env["MONGO_URI"]
    assert options["--kafka"] == order_env["KAFKA_BOOTSTRAP_SERVERS"]
    assert options["--redis"] == order_env["REDIS_URL"]
    assert options["--order-url"] == f"http://order:{order_env['ORDER_PORT']}"
    assert options["--mailpit-url"] == "http://mailpit:8025"
