"""Where the embedded stack lives and which ports it listens on.

``StackConfig.default()`` is what ``make up`` uses (well-known ports, data in ``.stack/`` of the
repository); ``StackConfig.for_tests(root)`` picks free ports so the test suite never collides
with a running ``make up``, and enables SecantusDB's test commands (``configureFailPoint``) and
the services' failpoints (``ENABLE_FAILPOINTS``); nothing else does.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from shared.auth.settings import DEV_JWKS_PATH, ORDER_API_AUDIENCE
from shared.kafka import TopicReplication

# The replica-set name SecantusDB advertises in its `hello` reply.
MONGO_REPLICA_SET: Final = "secantus"

REPO_ROOT: Final = Path(__file__).resolve().parent.parent

# "issuer": the development identity provider (stack/issuer.py): the JWKS the order API checks
# bearer tokens against and the key `python -m stack token` signs them with.
INFRA: Final = ("mongo", "kafka", "redis", "smtp", "issuer")
# Toxiproxy, the TCP fault proxy: started only when asked for (a fault test, `stack up
# toxiproxy`), never by default. Services reach a server through it only when told to (see
# ``proxied_env``); everything else keeps the direct path.
FAULT_PROXY: Final = "toxiproxy"
# "inventory-relay": the relay program serving inventory's outbox (its verdicts), one outbox
# per relay process; "order-verdicts": the order service's consumer of those verdicts (see
# SERVICE_PROCESSES).
SERVICES: Final = ("order", "relay", "inventory", "email", "inventory-relay", "order-verdicts")
# What an operator opens: started by `make up` with the rest, not part of the pipeline.
OPERATOR: Final = ("console",)
ALL: Final = INFRA + SERVICES + OPERATOR
# Started only when asked for (`python -m stack up --with jaeger`, a fault test): the trace
# backend and the fault proxy, binaries built from the Go module proxy (stack/gotools.py), and
# Keycloak (`--with keycloak`: ~480 MiB and ~30 s to start, resolved from Maven Central on first
# use, stack/keycloak), never part of `make demo`.
OPTIONAL: Final = ("jaeger", FAULT_PROXY, "keycloak")
KNOWN: Final = ALL + OPTIONAL
# The servers a service can be routed to through the fault proxy, one proxy each (and one per
# extra Kafka broker of a cluster, see ``StackConfig.proxied_servers``).
PROXIED: Final = ("mongo", "kafka", "redis", "smtp")

# A Kafka cluster of the embedded stack: `kafka` is node 1, the others `kafka-2`, `kafka-3` ...
# (``python -m stack up --kafka-brokers 3``). One broker is the default (`make demo`, the fast
# test tiers); the cap keeps node names to one digit and default ports apart.
MAX_KAFKA_BROKERS: Final = 5
# The ports of one broker: its client listener (the instance name itself), its controller, its
# listener for proxied clients, and the fault proxy's port in front of it.
KAFKA_PORT_SUFFIXES: Final = ("", "_controller", "_proxied", "_proxy")
# Under a stack's root: the cluster size its Kafka data was formatted for (`stack up` writes it).
KAFKA_BROKERS_FILE: Final = Path("conf") / "kafka-brokers"
# Default ports of node n (n >= 2): node 1's plus 100 * (n - 1), so 9192/9193/9194 and 19192
# for kafka-2.
_KAFKA_NODE_PORT_STEP: Final = 100

HOST: Final = "127.0.0.1"
# The realm of stack/keycloak/realm-outbox.json.
KEYCLOAK_REALM: Final = "outbox"

DEFAULT_PORTS: Final = {
    "mongo": 27017,
    "kafka": 9092,
    "kafka_controller": 9093,
    "redis": 6379,
    "smtp": 1025,
    "issuer": 8090,
    # Keycloak's HTTP port (not its usual 8080, which many other dev servers take).
    "keycloak": 8180,
    # Toxiproxy's HTTP API, and the address each proxy listens on (named "<server>_proxy").
    "toxiproxy": 8474,
    "mongo_proxy": 27018,
    "kafka_proxy": 19092,
    "redis_proxy": 16379,
    "smtp_proxy": 11025,
    # Kafka's own listener for proxied clients: it advertises kafka_proxy, so a client that
    # bootstrapped through the proxy is told to keep talking to the proxy, not to 9092.
    "kafka_proxied": 9094,
    "order": 8000,
    "relay": 8001,
    "inventory": 8002,
    "email": 8003,
    "console": 8004,
    "inventory-relay": 8005,
    "order-verdicts": 8006,
    # Jaeger: the UI and query API, its gRPC query port, and the OTLP/HTTP receiver.
    "jaeger": 16686,
    "jaeger_grpc": 16685,
    "jaeger_otlp": 4318,
}


@dataclass(frozen=True)
class ServiceProcess:
    """How a service of the stack runs: ``python -m <module>``, its port read from
    ``port_env`` (its host from the matching ``*_HOST``), plus the variables that make the
    program this service (``env``; a stack's own overrides still win)."""

    module: str
    port_env: str
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def host_env(self) -> str:
        return self.port_env.removesuffix("_PORT") + "_HOST"

    @property
    def main_path(self) -> Path:
        """The module's ``__main__.py``: the service exists once it does."""
        return REPO_ROOT.joinpath(*self.module.split("."), "__main__.py")


# Services that are not simply ``python -m services.<name>`` reading ``<NAME>_PORT``. Each
# outbox has relays of its own: the relay program, configured for inventory's database, with a
# transactional id of its own (relays of two outboxes sharing one would fence each other).
SERVICE_PROCESSES: Final[Mapping[str, ServiceProcess]] = {
    "inventory-relay": ServiceProcess(
        "services.relay",
        "RELAY_PORT",
        {"RELAY_DATABASE": "inventory", "RELAY_TRANSACTIONAL_ID": "inventory-relay"},
    ),
    "order-verdicts": ServiceProcess("services.order.verdicts", "ORDER_VERDICTS_PORT"),
}


def service_process(name: str) -> ServiceProcess:
    """How the service ``name`` (a component of SERVICES or OPERATOR) runs."""
    if name in SERVICE_PROCESSES:
        return SERVICE_PROCESSES[name]
    return ServiceProcess(f"services.{name}", f"{name.upper()}_PORT")


def kafka_node_name(node_id: int) -> str:
    """The stack's instance name of Kafka node ``node_id``: ``kafka``, ``kafka-2`` ..."""
    return "kafka" if node_id == 1 else f"kafka-{node_id}"


def kafka_node_id(instance: str) -> int:
    """``kafka`` -> 1, ``kafka-3`` -> 3; ValueError for anything else."""
    if instance == "kafka":
        return 1
    head, _, number = instance.partition("-")
    ascii_digit = number.isascii() and number.isdigit()  # "²" is isdigit(); int() refuses it
    if head == "kafka" and ascii_digit and len(number) == 1 and int(number) >= 2:
        return int(number)
    raise ValueError(f"{instance!r} is not a Kafka node name (kafka, kafka-2 ... kafka-9)")


def _kafka_node_ports(brokers: int) -> dict[str, int]:
    """Default ports of the nodes after the first (node 1 has DEFAULT_PORTS')."""
    ports: dict[str, int] = {}
    for node in range(2, brokers + 1):
        shift = _KAFKA_NODE_PORT_STEP * (node - 1)
        for suffix in KAFKA_PORT_SUFFIXES:
            ports[f"{kafka_node_name(node)}{suffix}"] = DEFAULT_PORTS[f"kafka{suffix}"] + shift
    return ports


def kafka_brokers_argument(text: str) -> int:
    """``--kafka-brokers N`` of the command lines (stack, bench): 1 to MAX_KAFKA_BROKERS."""
    try:
        brokers = int(text)
    except ValueError:
        brokers = 0
    if not 1 <= brokers <= MAX_KAFKA_BROKERS:
        raise argparse.ArgumentTypeError(f"1 to {MAX_KAFKA_BROKERS} brokers, not {text!r}")
    return brokers


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _free_ports(names: tuple[str, ...]) -> dict[str, int]:
    # Hold every socket open until all are picked so two names never get the same port.
    socks: list[socket.socket] = []
    try:
        for _ in names:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return {name: int(s.getsockname()[1]) for name, s in zip(names, socks, strict=True)}
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class StackConfig:
    """Paths, ports and switches of one embedded stack. Immutable; use ``with_ports`` to vary."""

    root: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    environment: str = "local"
    # Test hooks, both off unless a test stack turns them on: SecantusDB's test commands
    # (configureFailPoint) and the services' failpoints (ENABLE_FAILPOINTS).
    enable_test_commands: bool = False
    enable_failpoints: bool = False
    kafka_libs: Path = REPO_ROOT / ".stack" / "kafka" / "libs"
    python: Path = Path(sys.executable)
    # Per-component readiness deadlines in seconds. Kafka's JVM is the slow one on two cores.
    ready_timeouts: dict[str, float] = field(
        default_factory=lambda: {
            "mongo": 30.0,
            "kafka": 120.0,
            "redis": 20.0,
            "smtp": 20.0,
            "toxiproxy": 20.0,
            "issuer": 20.0,
            # Its realm answered 31 s after start on two idle cores, 85-140 s on two busy ones
            # (the first start also builds its Quarkus application).
            "keycloak": 240.0,
        }
    )
    service_ready_timeout: float = 60.0
    # -Xmx512m bounds the broker's heap (idle RSS ~350 MB). C1-only JIT and the serial GC cut
    # the JVM's start-up CPU roughly in half on two shared cores (measured under load: 8-17 s
    # instead of 24-27 s to ready); a dev/test broker never needs C2's peak throughput.
    # STACK_KAFKA_JVM_OPTS replaces them. Each node of a cluster gets half that heap (-Xmx256m;
    # measured 330-380 MB resident each under the broker chaos scenarios' load, most of it the
    # JVM's own, not heap): three nodes stay near one GB together.
    kafka_jvm_opts: tuple[str, ...] = ("-Xmx512m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
    # Kafka nodes (combined broker + controller each, so a quorum of as many controllers); the
    # topics' replication follows from it (shared.kafka.TopicReplication.for_brokers).
    kafka_brokers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.kafka_brokers <= MAX_KAFKA_BROKERS:
            raise ValueError(
                f"--kafka-brokers: 1 to {MAX_KAFKA_BROKERS} Kafka brokers, got {self.kafka_brokers}"
            )
        # A node's ports default to node 1's shifted (see _kafka_node_ports); ports given
        # explicitly (free ports of a test stack, STACK_<NAME>_PORT) win.
        # (A copy: ``replace`` hands the same dict to the new config.)
        object.__setattr__(self, "ports", _kafka_node_ports(self.kafka_brokers) | self.ports)

    @classmethod
    def default(cls, kafka_brokers: int | None = None, root: Path | None = None) -> StackConfig:
        """Well-known ports, data in ``<repo>/.stack``; ``STACK_ROOT`` and ``STACK_<NAME>_PORT``
        (e.g. ``STACK_MONGO_PORT``, ``STACK_KAFKA_CONTROLLER_PORT``, ``STACK_KAFKA_2_PORT``)
        override them (``root``, e.g. ``--root``, wins over ``STACK_ROOT``). The Kafka
        cluster's size: ``kafka_brokers``, else ``STACK_KAFKA_BROKERS``, else what this stack was
        last started with (so ``stack pause kafka-2`` finds node 2), else one broker."""
        root = (root or Path(os.environ.get("STACK_ROOT", REPO_ROOT / ".stack"))).resolve()
        if kafka_brokers is None:
            kafka_brokers = _int_env("STACK_KAFKA_BROKERS") or recorded_kafka_brokers(root) or 1
        ports = dict(DEFAULT_PORTS) | _kafka_node_ports(kafka_brokers)
        for name in ports:
            value = os.environ.get(f"STACK_{name.upper().replace('-', '_')}_PORT")
            if value:
                ports[name] = int(value)
        config = cls(root=root, ports=ports, kafka_brokers=kafka_brokers)
        if libs := os.environ.get("STACK_KAFKA_LIBS"):
            config = replace(config, kafka_libs=Path(libs))
        if jvm_opts := os.environ.get("STACK_KAFKA_JVM_OPTS"):
            config = replace(config, kafka_jvm_opts=tuple(jvm_opts.split()))
        return config

    @classmethod
    def for_tests(cls, root: Path, kafka_brokers: int = 1) -> StackConfig:
        """Free ports, ``ENVIRONMENT=test``, test commands and failpoints on; data and logs
        under ``root``; ``kafka_brokers`` Kafka nodes."""
        names = tuple(DEFAULT_PORTS) + tuple(_kafka_node_ports(kafka_brokers))
        return cls(
            root=Path(root).resolve(),
            ports=_free_ports(names),
            environment="test",
            enable_test_commands=True,
            enable_failpoints=True,
            kafka_brokers=kafka_brokers,
        )

    # -- the Kafka cluster -------------------------------------------------------------------
    @property
    def kafka_nodes(self) -> tuple[str, ...]:
        """Instance names of the Kafka nodes: ``("kafka",)`` or ``("kafka", "kafka-2", ...)``."""
        return tuple(kafka_node_name(n) for n in range(1, self.kafka_brokers + 1))

    @property
    def infra_instances(self) -> tuple[str, ...]:
        """Every infrastructure process of this stack, each Kafka node by its own name."""
        return tuple(
            n for name in INFRA for n in (self.kafka_nodes if name == "kafka" else (name,))
        )

    @property
    def kafka_replication(self) -> TopicReplication:
        """Replication of every topic (ours and Kafka's internal ones) on this cluster."""
        return TopicReplication.for_brokers(self.kafka_brokers)

    @property
    def kafka_heap_opts(self) -> tuple[str, ...]:
        """The JVM options of one node: a single broker's as they are; in a cluster, each
        node's maximum heap is halved (three brokers on one small machine)."""
        if self.kafka_brokers == 1:
            return self.kafka_jvm_opts
        return tuple(
            f"-Xmx{_halved_megabytes(opt[4:])}m" if opt.startswith("-Xmx") else opt
            for opt in self.kafka_jvm_opts
        )

    @property
    def kafka_brokers_path(self) -> Path:
        """Where ``up`` records the cluster size this stack's Kafka data was formatted for."""
        return self.root / KAFKA_BROKERS_FILE

    # -- paths -------------------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def logs_root(self) -> Path:
        return self.root / "logs"

    @property
    def run_root(self) -> Path:
        """PID files: how ``python -m stack down`` finds what ``up --detach`` started."""
        return self.root / "run"

    def data_dir(self, component: str) -> Path:
        return self.data_root / component

    def log_path(self, instance: str) -> Path:
        return self.logs_root / f"{instance}.log"

    # -- addresses ---------------------------------------------------------------------------
    def port_of(self, name: str) -> int:
        try:
            return self.ports[name]
        except KeyError:
            raise KeyError(
                f"no port configured for {name!r}; known: {sorted(self.ports)}"
            ) from None

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://{HOST}:{self.ports['mongo']}/?replicaSet={MONGO_REPLICA_SET}"

    @property
    def kafka_bootstrap(self) -> str:
        """Every node of the cluster: a client bootstraps from whichever answers first."""
        return ",".join(f"{HOST}:{self.ports[node]}" for node in self.kafka_nodes)

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.ports['redis']}/0"

    @property
    def smtp_host(self) -> str:
        return HOST

    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"]

    @property
    def smtp_dir(self) -> Path:
        """Where the SMTP sink writes one ``.eml`` file per received message."""
        return self.data_dir("smtp")

    @property
    def toxiproxy_url(self) -> str:
        return f"http://{HOST}:{self.ports['toxiproxy']}"

    @property
    def proxied_servers(self) -> tuple[str, ...]:
        """The servers the fault proxy fronts: :data:`PROXIED`, and every extra Kafka node
        (a client that bootstrapped through the proxy is sent to each node's own proxy)."""
        return PROXIED + self.kafka_nodes[1:]

    def proxy_address(self, server: str) -> tuple[str, int]:
        """Where the fault proxy in front of ``server`` (one of :attr:`proxied_servers`)
        listens."""
        if server not in self.proxied_servers:
            raise ValueError(
                f"no proxy for {server!r}; proxied servers: {', '.join(self.proxied_servers)}"
            )
        return HOST, self.port_of(f"{server}_proxy")

    def proxy_upstream(self, server: str) -> tuple[str, int]:
        """Where the proxy in front of ``server`` forwards to: a Kafka node's own proxied
        listener, the server's port for the others."""
        if server in self.kafka_nodes:
            return HOST, self.port_of(f"{server}_proxied")
        return HOST, self.port_of(server)

    def proxied_env(self, servers: Iterable[str] = PROXIED) -> dict[str, str]:
        """Environment overrides that route a service to ``servers`` through the fault proxy.

        MongoDB is reached with ``directConnection=true``: replica-set discovery would otherwise
        replace the proxy's address with the member address the server advertises (the real
        port) and the fault would miss. A direct connection to the primary still runs
        transactions and change streams, on SecantusDB and on a real replica set alike.
        """
        env: dict[str, str] = {}
        for server in servers:
            host, port = self.proxy_address(server)
            if server == "mongo":
                env["MONGO_URI"] = f"mongodb://{host}:{port}/?directConnection=true"
            elif server == "kafka":
                # Every node's proxy, as the direct bootstrap lists every node.
                env["KAFKA_BOOTSTRAP_SERVERS"] = ",".join(
                    "{}:{}".format(*self.proxy_address(node)) for node in self.kafka_nodes
                )
            elif server == "redis":
                env["REDIS_URL"] = f"redis://{host}:{port}/0"
            else:
                env["SMTP_HOST"], env["SMTP_PORT"] = host, str(port)
        return env

    def service_env(self) -> dict[str, str]:
        """Environment variables pointing a service process at this stack (see shared.settings)."""
        env = {
            "MONGO_URI": self.mongo_uri,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "REDIS_URL": self.redis_url,
            "SMTP_HOST": self.smtp_host,
            "SMTP_PORT": str(self.smtp_port),
            "ENVIRONMENT": self.environment,
        }
        if self.enable_failpoints:
            env["ENABLE_FAILPOINTS"] = "true"
        for service in SERVICES + OPERATOR:
            process = service_process(service)
            if process.port_env in env:
                # Another service's program (inventory-relay runs the relay): its port is set
                # in its own environment only (supervisor), not over the first one's.
                continue
            env[process.host_env] = HOST
            env[process.port_env] = str(self.ports[service])
        return env

    def console_env(self) -> dict[str, str]:
        """Where the console finds the services of this stack and the SMTP sink's files."""
        url = {name: f"http://{HOST}:{self.ports[name]}" for name in SERVICES}
        return {
            "CONSOLE_ORDER_URL": url["order"],
            "CONSOLE_RELAY_URLS": json.dumps([url["relay"]]),
            "CONSOLE_INVENTORY_URL": url["inventory"],
            "CONSOLE_INVENTORY_RELAY_URLS": json.dumps([url["inventory-relay"]]),
            "CONSOLE_ORDER_VERDICTS_URL": url["order-verdicts"],
            "CONSOLE_EMAIL_URL": url["email"],
            "CONSOLE_SMTP_DIR": str(self.smtp_dir),
        }

    @property
    def otlp_endpoint(self) -> str:
        """Where the services send spans when the stack runs Jaeger."""
        return f"http://{HOST}:{self.ports['jaeger_otlp']}"

    @property
    def jaeger_url(self) -> str:
        return f"http://{HOST}:{self.ports['jaeger']}"

    # -- identity ----------------------------------------------------------------------------
    @property
    def issuer_url(self) -> str:
        """The development issuer's ``iss``, also its base URL (JWKS at ``/jwks.json``)."""
        return f"http://{HOST}:{self.ports['issuer']}"

    @property
    def issuer_key_path(self) -> Path:
        """The development issuer's private key (PEM, mode 0600), made on its first start."""
        return self.root / "conf" / "issuer-key.pem"

    @property
    def keycloak_issuer(self) -> str:
        """The ``iss`` of the embedded Keycloak's realm (stack/keycloak/realm-outbox.json)."""
        return f"http://{HOST}:{self.ports['keycloak']}/realms/{KEYCLOAK_REALM}"

    def auth_env(self, keycloak: bool = False) -> dict[str, str]:
        """``AUTH_*`` for the order API: the development issuer's, or Keycloak's realm."""
        if keycloak:
            return {
                "AUTH_ISSUER": self.keycloak_issuer,
                "AUTH_AUDIENCE": ORDER_API_AUDIENCE,
                "AUTH_JWKS_URL": f"{self.keycloak_issuer}/protocol/openid-connect/certs",
            }
        return {
            "AUTH_ISSUER": self.issuer_url,
            "AUTH_AUDIENCE": ORDER_API_AUDIENCE,
            "AUTH_JWKS_URL": self.issuer_url + DEV_JWKS_PATH,
        }

    @property
    def console_token_path(self) -> Path:
        """The generated console token (mode 0600), reused by later starts of this stack."""
        return self.root / "conf" / "console-token"


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: a whole number of brokers, got {value!r}") from None


def recorded_kafka_brokers(root: Path) -> int | None:
    """The cluster size ``python -m stack up`` recorded for the stack in ``root`` (None: none)."""
    try:
        return int((root / KAFKA_BROKERS_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _halved_megabytes(size: str) -> int:
    """``512m`` -> 256, ``1g`` -> 512 (a JVM -Xmx size, halved, in MiB)."""
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    unit = size[-1].lower() if size and size[-1].isalpha() else ""
    number = float(size[:-1] if unit else size) * units.get(unit, 1 / 1024 / 1024)
    return max(64, int(number / 2))
