"""Where the embedded stack lives and which ports it listens on.

``StackConfig.default()`` is what ``make up`` uses (well-known ports, data in ``.stack/`` of the
repository); ``StackConfig.for_tests(root)`` picks free ports so the test suite never collides
with a running ``make up``, and enables SecantusDB's test commands (``configureFailPoint``) and
the services' failpoints (``ENABLE_FAILPOINTS``); nothing else does.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

# The replica-set name SecantusDB advertises in its `hello` reply.
MONGO_REPLICA_SET: Final = "secantus"

REPO_ROOT: Final = Path(__file__).resolve().parent.parent

INFRA: Final = ("mongo", "kafka", "redis", "smtp")
# Toxiproxy, the TCP fault proxy: started only when asked for (a fault test, `stack up
# toxiproxy`), never by default. Services reach a server through it only when told to (see
# ``proxied_env``); everything else keeps the direct path.
FAULT_PROXY: Final = "toxiproxy"
SERVICES: Final = ("order", "relay", "inventory", "email")
# What an operator opens: started by `make up` with the rest, not part of the pipeline.
OPERATOR: Final = ("console",)
ALL: Final = INFRA + SERVICES + OPERATOR
# Started only when asked for (`python -m stack up --with jaeger`, a fault test): the trace
# backend and the fault proxy, binaries built from the Go module proxy (stack/gotools.py), never
# part of `make demo`.
OPTIONAL: Final = ("jaeger", FAULT_PROXY)
KNOWN: Final = ALL + OPTIONAL
# The servers a service can be routed to through the fault proxy, one proxy each.
PROXIED: Final = ("mongo", "kafka", "redis", "smtp")

HOST: Final = "127.0.0.1"

DEFAULT_PORTS: Final = {
    "mongo": 27017,
    "kafka": 9092,
    "kafka_controller": 9093,
    "redis": 6379,
    "smtp": 1025,
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
    # Jaeger: the UI and query API, its gRPC query port, and the OTLP/HTTP receiver.
    "jaeger": 16686,
    "jaeger_grpc": 16685,
    "jaeger_otlp": 4318,
}


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
        }
    )
    service_ready_timeout: float = 60.0
    # -Xmx512m bounds the broker's heap (idle RSS ~350 MB). C1-only JIT and the serial GC cut
    # the JVM's start-up CPU roughly in half on two shared cores (measured under load: 8-17 s
    # instead of 24-27 s to ready); a dev/test broker never needs C2's peak throughput.
    # STACK_KAFKA_JVM_OPTS replaces them.
    kafka_jvm_opts: tuple[str, ...] = ("-Xmx512m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")

    @classmethod
    def default(cls) -> StackConfig:
        """Well-known ports, data in ``<repo>/.stack``; ``STACK_ROOT`` and ``STACK_<NAME>_PORT``
        (e.g. ``STACK_MONGO_PORT``, ``STACK_KAFKA_CONTROLLER_PORT``) override them."""
        root = Path(os.environ.get("STACK_ROOT", REPO_ROOT / ".stack"))
        ports = dict(DEFAULT_PORTS)
        for name in ports:
            value = os.environ.get(f"STACK_{name.upper()}_PORT")
            if value:
                ports[name] = int(value)
        config = cls(root=root.resolve(), ports=ports)
        if libs := os.environ.get("STACK_KAFKA_LIBS"):
            config = replace(config, kafka_libs=Path(libs))
        if jvm_opts := os.environ.get("STACK_KAFKA_JVM_OPTS"):
            config = replace(config, kafka_jvm_opts=tuple(jvm_opts.split()))
        return config

    @classmethod
    def for_tests(cls, root: Path) -> StackConfig:
        """Free ports, ``ENVIRONMENT=test``, test commands and failpoints on; data and logs
        under ``root``."""
        return cls(
            root=Path(root).resolve(),
            ports=_free_ports(tuple(DEFAULT_PORTS)),
            environment="test",
            enable_test_commands=True,
            enable_failpoints=True,
        )

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
        return f"{HOST}:{self.ports['kafka']}"

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

    def proxy_address(self, server: str) -> tuple[str, int]:
        """Where the fault proxy in front of ``server`` (one of :data:`PROXIED`) listens."""
        if server not in PROXIED:
            raise ValueError(f"no proxy for {server!r}; proxied servers: {', '.join(PROXIED)}")
        return HOST, self.port_of(f"{server}_proxy")

    def proxy_upstream(self, server: str) -> tuple[str, int]:
        """Where the proxy in front of ``server`` forwards to: Kafka's own proxied listener,
        the server's port for the others."""
        return HOST, self.port_of("kafka_proxied" if server == "kafka" else server)

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
                env["KAFKA_BOOTSTRAP_SERVERS"] = f"{host}:{port}"
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
            env[f"{service.upper()}_HOST"] = HOST
            env[f"{service.upper()}_PORT"] = str(self.ports[service])
        return env

    def console_env(self) -> dict[str, str]:
        """Where the console finds the services of this stack and the SMTP sink's files."""
        url = {name: f"http://{HOST}:{self.ports[name]}" for name in SERVICES}
        return {
            "CONSOLE_ORDER_URL": url["order"],
            "CONSOLE_RELAY_URLS": json.dumps([url["relay"]]),
            "CONSOLE_INVENTORY_URL": url["inventory"],
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

    @property
    def console_token_path(self) -> Path:
        """The generated console token (mode 0600), reused by later starts of this stack."""
        return self.root / "conf" / "console-token"
