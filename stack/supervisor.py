"""The embedded stack supervisor: start, probe, stop and kill real server processes.

Every component runs as its own process in its own process group (``start_new_session``), so a
signal reaches the whole group (a JVM, a Python server and anything they spawn) and Ctrl-C in the
terminal of ``python -m stack up`` reaches only the supervisor, which then stops the components in
order. PIDs are written to ``<root>/run/<instance>.json`` so another invocation (``down``,
``status``, ``kill``) finds what ``up --detach`` started.

The API is synchronous on purpose: it shells out and polls. Async tests call it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.contracts import TOPIC_PARTITIONS
from stack import keycloak, probes
from stack.config import (
    ALL,
    FAULT_PROXY,
    HOST,
    INFRA,
    KEYCLOAK_REALM,
    KNOWN,
    OPTIONAL,
    REPO_ROOT,
    SERVICES,
    StackConfig,
    free_port,
    kafka_node_id,
    recorded_kafka_brokers,
    service_process,
)
from stack.toxiproxy import Toxiproxy

CONSOLE_TOKEN_ENV = "CONSOLE_TOKEN"

# Jaeger v2 is an OpenTelemetry collector: this is its all-in-one configuration trimmed to what the
# stack uses (no Jaeger/Zipkin receivers, no sampling or debug endpoints, no self-metrics port).
JAEGER_CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: "{host}:{ui}"
    grpc:
      endpoint: "{host}:{grpc}"
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      http:
        endpoint: "{host}:{otlp}"
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""

LOG_TAIL_LINES = 20
# How long SIGTERM may take before SIGKILL. Services drain in-flight work for up to
# ORDER_DRAIN_SECONDS etc. (30 s by default), so they get a little longer than that.
STOP_TIMEOUTS = {
    "mongo": 20.0,
    "kafka": 40.0,
    "redis": 15.0,
    "smtp": 10.0,
    "jaeger": 15.0,
    "toxiproxy": 10.0,
    "issuer": 10.0,
    "keycloak": 30.0,
}
SERVICE_STOP_TIMEOUT = 40.0
POLL_INTERVAL = 0.1
# A component name, or a service's extra instance: "relay-2", "relay-crash-1a2b3c",
# "inventory-relay-2". Strict, because the name becomes a pid-file and log-file path
# ("relay-/../../x" must not).
_INSTANCE_NAME = re.compile(r"[a-z]+(?:-[a-z0-9]+)*")
_INSTANCE_NAME_MAX = 48
KAFKA_LOG4J_CONFIG = Path(__file__).resolve().parent / "kafka-log4j2.properties"


class StackError(RuntimeError):
    """A component could not be started, became unready or did not stop.

    The message names the component and its log file and quotes the log's last lines, so the
    failure can be understood without opening anything.
    """

    def __init__(self, component: str, problem: str, log_path: Path | None = None) -> None:
        self.component = component
        self.log_path = log_path
        message = f"{component}: {problem}"
        if log_path is not None:
            message += f"\n  log: {log_path}\n" + _indent(tail(log_path, LOG_TAIL_LINES))
        super().__init__(message)


def _indent(text: str) -> str:
    if not text:
        return "  (log is empty)"
    return "\n".join(f"  | {line}" for line in text.splitlines())


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


@dataclass(frozen=True)
class _Launch:
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    ready: Callable[[], bool]
    ready_timeout: float
    stop_timeout: float
    # Runs once the probe passes; must return True before the component counts as ready.
    after_ready: Callable[[], bool] | None = None


def component_of(instance: str) -> str:
    """``relay-2`` -> ``relay``; ``mongo`` -> ``mongo``; ``inventory-relay`` -> itself and
    ``inventory-relay-2`` -> ``inventory-relay`` (the longest component the name starts with).

    Raises ValueError naming ``instance`` unless it is a known component, or a service followed
    by ``-<name>`` parts of ``a-z0-9`` (infrastructure components run once, under their name).
    """
    component = None
    if _INSTANCE_NAME.fullmatch(instance):
        component = max(
            (c for c in KNOWN if instance == c or instance.startswith(c + "-")),
            key=len,
            default=None,
        )
    if component not in KNOWN:
        raise ValueError(f"unknown component {instance!r}; expected one of {', '.join(KNOWN)}")
    assert component is not None
    if instance != component and component == "kafka" and _is_kafka_node(instance):
        return component
    if instance != component and (
        component in INFRA + OPTIONAL or len(instance) > _INSTANCE_NAME_MAX
    ):
        raise ValueError(
            f"invalid instance name {instance!r}: {', '.join(INFRA)} run once under their own "
            f"name (the nodes of a Kafka cluster are kafka, kafka-2, kafka-3 ...); an extra "
            f"service instance is <service>-<name>, <name> of a-z, 0-9 and single dashes, at "
            f"most {_INSTANCE_NAME_MAX} characters (e.g. relay-2)"
        )
    return component


def _is_kafka_node(instance: str) -> bool:
    try:
        kafka_node_id(instance)
    except ValueError:
        return False
    return True


# /proc/<pid>/stat states of a process stopped by a signal (T) or traced while stopped (t).
_STOPPED_STATES = ("T", "t")


def _process_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[0]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    return _process_state(pid) not in ("Z", "X", "?")


def _identity(pid: int) -> tuple[str, int] | None:
    """(boot id, start time in clock ticks since boot) of a live process, None if there is none.

    A pid alone names whichever process holds it now; with its start time it names exactly
    the process the stack started (a recycled pid starts later), across reboots too.
    """
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); fields are counted after the parenthesised command name.
    return boot_id, int(stat.rsplit(")", 1)[1].split()[19])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def kafka_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's Uuid)."""
    while True:
        text = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka refuses ids that look like a command-line flag
            return text


def console_token(config: StackConfig) -> tuple[str, bool]:
    """The token the stack's console runs with, and whether it was generated just now.

    ``CONSOLE_TOKEN`` from the environment wins; otherwise the one generated for this stack
    earlier (``<root>/conf/console-token``, readable by its owner only), or a new one.
    """
    if token := os.environ.get(CONSOLE_TOKEN_ENV):
        return token, False
    path = config.console_token_path
    if path.is_file():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def service_exists(name: str) -> bool:
    return service_process(name).main_path.is_file()


class Stack:
    """Supervises the components of one :class:`StackConfig`.

    Instances: each component runs once under its own name; services can run extra instances
    (``start("relay", instance="relay-2", env=...)``) with their own port and log file.
    """

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._extra_ports: dict[str, int] = {}

    # -- public API ------------------------------------------------------------------------------
    def up(self, names: Iterable[str] = ALL) -> None:
        """Start ``names`` (infra first, then services) and wait until each is ready.

        Components already running are only probed. On failure, what this call started is
        stopped again before the error is raised, so nothing is left orphaned.
        """
        wanted = list(dict.fromkeys(names))
        for name in wanted:
            component_of(name)
        if "kafka" in wanted:
            self._record_kafka_brokers()
        # Jaeger starts with the infrastructure, so the services find it when they start.
        # "kafka" is the whole cluster here: every node is launched before any is awaited (a
        # node is ready only once a quorum of controllers runs).
        infra: list[str] = [
            node
            for n in INFRA + OPTIONAL
            if n in wanted
            for node in (self.config.kafka_nodes if n == "kafka" else (n,))
        ]
        services: list[str] = [n for n in wanted if n not in infra]
        started: list[str] = []
        try:
            # Launch every infra process before waiting on any: Kafka's JVM start-up overlaps
            # with the others instead of adding to them.
            launches: dict[str, _Launch] = {
                n: self._launch(component_of(n), n, None, started) for n in infra
            }
            for n in infra:
                self._await_ready(n, launches[n])
            launches = {n: self._launch(component_of(n), n, None, started) for n in services}
            for n in services:
                self._await_ready(n, launches[n])
        except BaseException:
            for n in reversed(started):
                with contextlib.suppress(Exception):
                    self.stop(n)
            raise

    def down(self, wipe: bool = False) -> None:
        """Stop every component (services first); ``wipe`` also deletes all their data."""
        instances = self._shutdown_order(self._known_instances())
        nodes = [i for i in instances if component_of(i) == "kafka"]
        for instance in instances:
            if instance not in nodes:
                self.stop(instance)
            elif instance == nodes[0]:
                # The nodes of a cluster stop together: stopped one by one, the last ones lose
                # the controller quorum and their controlled shutdown waits until SIGKILL (40 s).
                with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
                    list(pool.map(self.stop, nodes))
        if wipe:
            shutil.rmtree(self.config.data_root, ignore_errors=True)
            shutil.rmtree(self.config.root / "conf", ignore_errors=True)

    def start(
        self,
        name: str,
        env: Mapping[str, str] | None = None,
        *,
        instance: str | None = None,
        wait: bool = True,
    ) -> None:
        """Start one component (or an extra ``instance`` of a service) and wait until it is ready.

        ``env`` is added to a service's environment (e.g. ``{"RELAY_FAILPOINT": ...}``). An
        already running instance is only probed.
        """
        component = component_of(name)
        instance = instance or name
        if instance != component and component in INFRA + OPTIONAL and component != "kafka":
            raise ValueError(f"{component} runs as one instance only, got instance={instance!r}")
        if component == "kafka" and component_of(instance) != "kafka":
            raise ValueError(f"instance {instance!r} is not a Kafka node")
        launch = self._launch(component, instance, env, [])
        if wait:
            self._await_ready(instance, launch)

    def stop(self, name: str, timeout: float | None = None) -> int | None:
        """SIGTERM the component's process group, wait up to ``timeout``, then SIGKILL it.

        Returns the exit code when this Stack started the process (None for one it only found
        through its pid file, or that was not running).
        """
        component = component_of(name)
        pid = self._pid(name)
        if pid is None:
            self._forget(name)
            return None
        if timeout is None:
            timeout = STOP_TIMEOUTS.get(component, SERVICE_STOP_TIMEOUT)
        _signal_group(pid, signal.SIGTERM)
        # A paused process keeps SIGTERM pending until it runs again.
        _signal_group(pid, signal.SIGCONT)
        if not self._wait_exit(name, pid, timeout):
            _signal_group(pid, signal.SIGKILL)
            if not self._wait_exit(name, pid, 10.0):
                raise StackError(name, f"pid {pid} survived SIGKILL", self.logs_path(name))
        code = self._exit_code(name)  # read before _forget drops the process handle
        _signal_group(pid, signal.SIGKILL)  # stragglers left in the group, if any
        self._forget(name)
        return code

    def kill(self, name: str) -> None:
        """SIGKILL the component's process group (a crash: no flush, no goodbye)."""
        component_of(name)  # refuse unknown names instead of silently doing nothing
        pid = self._pid(name)
        if pid is None:
            self._forget(name)
            return
        _signal_group(pid, signal.SIGKILL)
        if not self._wait_exit(name, pid, 10.0):
            raise StackError(name, f"pid {pid} survived SIGKILL", self.logs_path(name))
        self._forget(name)

    def pause(self, name: str) -> None:
        """SIGSTOP the component's process group: it stays up, holds its sockets and answers
        nothing (a GC pause, a frozen VM), until :meth:`resume`."""
        self._signal_running(name, signal.SIGSTOP)
        self._wait_state(name, paused=True)

    def resume(self, name: str) -> None:
        """SIGCONT the component's process group: it carries on where it was paused."""
        self._signal_running(name, signal.SIGCONT)
        self._wait_state(name, paused=False)

    def is_paused(self, name: str) -> bool:
        pid = self._pid(name)
        return pid is not None and _process_state(pid) in _STOPPED_STATES

    def _signal_running(self, name: str, signum: signal.Signals) -> None:
        component_of(name)  # refuse unknown names instead of silently doing nothing
        pid = self._pid(name)
        if pid is None:
            raise StackError(name, "is not running", self.logs_path(name))
        _signal_group(pid, signum)

    def _wait_state(self, name: str, *, paused: bool, timeout: float = 5.0) -> None:
        # Signals are delivered asynchronously: the caller's next step (a fault's clock, a
        # resume) must start from the state it asked for.
        deadline = time.monotonic() + timeout
        while self.is_paused(name) != paused:
            if time.monotonic() > deadline:
                state = "paused" if paused else "running"
                raise StackError(name, f"not {state} {timeout:.0f}s after the signal")
            time.sleep(POLL_INTERVAL / 10)

    def toxiproxy(self) -> Toxiproxy:
        """A client for the fault proxy's API (start the ``toxiproxy`` component first)."""
        return Toxiproxy(self.config.toxiproxy_url)

    def restart(self, name: str, env: Mapping[str, str] | None = None) -> None:
        self.stop(name)
        component = component_of(name)
        self.start(component, env, instance=name if name != component else None)

    def is_running(self, name: str) -> bool:
        return self._pid(name) is not None

    def logs_path(self, name: str) -> Path:
        component_of(name)  # the name becomes a path: only well-formed names
        return self.config.log_path(name)

    def port_of(self, name: str) -> int:
        """The port of a component or an extra instance (``relay-2``)."""
        if name in self._extra_ports:
            return self._extra_ports[name]
        record = self._read_pid_file(name)
        if record and "port" in record:
            return int(record["port"])
        return self.config.port_of(name)

    def status(self, probe: bool = False) -> dict[str, dict[str, Any]]:
        """``{instance: {component, running, pid, port, log[, ready]}}`` for every component and
        every extra instance this stack knows of. ``probe`` adds a one-shot readiness check."""
        result: dict[str, dict[str, Any]] = {}
        for instance in self._known_instances(include_all=True):
            pid = self._pid(instance)
            entry: dict[str, Any] = {
                "component": component_of(instance),
                "running": pid is not None,
                "paused": pid is not None and _process_state(pid) in _STOPPED_STATES,
                "pid": pid,
                "port": self.port_of(instance),
                "log": str(self.logs_path(instance)),
            }
            if probe:
                entry["ready"] = pid is not None and self._probe(instance)
            result[instance] = entry
        return result

    def pids(self) -> dict[str, int]:
        """PIDs of the running instances (the process-group leaders)."""
        return {i: p for i in self._known_instances() if (p := self._pid(i)) is not None}

    # -- launching --------------------------------------------------------------------------------
    def _launch(
        self,
        component: str,
        instance: str | None,
        env: Mapping[str, str] | None,
        started: list[str],
    ) -> _Launch:
        instance = instance or component
        if component_of(instance) != component:
            raise ValueError(f"instance {instance!r} is not an instance of {component}")
        launch = self._plan(component, instance, env)
        if self._pid(instance) is not None:
            return launch
        for port in self._ports_of(component, instance):
            if _port_in_use(port):
                raise StackError(
                    instance,
                    f"port {port} on {HOST} is already in use by another process "
                    "(is another stack running? see `python -m stack status`)",
                )
        if component == "kafka":
            self._format_kafka_storage(instance)
        else:
            self.config.data_dir(component).mkdir(parents=True, exist_ok=True)
        self._spawn(instance, component, launch)
        started.append(instance)
        return launch

    def _spawn(self, instance: str, component: str, launch: _Launch) -> None:
        log_path = self.logs_path(instance)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.config.run_root.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"\n=== stack: starting {instance} at {stamp}: {launch.argv}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                launch.argv,
                cwd=launch.cwd,
                env=launch.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[instance] = proc
        identity = _identity(proc.pid)
        record = {
            "pid": proc.pid,
            # What later invocations check before signalling the pid (see _pid).
            "boot_id": identity[0] if identity else None,
            "started": identity[1] if identity else None,
            "component": component,
            "port": self.port_of(instance),
            "argv": launch.argv,
        }
        self._pid_file(instance).write_text(json.dumps(record))

    def _await_ready(self, instance: str, launch: _Launch) -> None:
        log = self.logs_path(instance)
        deadline = time.monotonic() + launch.ready_timeout
        ready = False
        while True:
            if self._pid(instance) is None:
                code = self._exit_code(instance)
                how = f"with code {code}" if code is not None else ""
                raise StackError(instance, f"exited {how} before it became ready", log)
            if not ready:
                ready = launch.ready()
            if ready and (launch.after_ready is None or launch.after_ready()):
                return
            if time.monotonic() > deadline:
                stage = "readiness probe" if not ready else "post-start setup"
                raise StackError(
                    instance,
                    f"not ready within {launch.ready_timeout:.0f}s ({stage} kept failing)",
                    log,
                )
            time.sleep(POLL_INTERVAL)  # poll interval of the probe loop, bounded by the deadline

    def _probe(self, instance: str) -> bool:
        return self._plan(component_of(instance), instance, None).ready()

    def _ports_of(self, component: str, instance: str) -> list[int]:
        ports = [self.port_of(instance)]
        if component == "kafka":
            ports += [self.config.port_of(f"{instance}{s}") for s in ("_controller", "_proxied")]
        if component == FAULT_PROXY:
            ports += [self.config.proxy_address(s)[1] for s in self.config.proxied_servers]
        return ports

    def _plan(self, component: str, instance: str, env: Mapping[str, str] | None) -> _Launch:
        c = self.config
        timeout = c.ready_timeouts.get(component, c.service_ready_timeout)
        stop_timeout = STOP_TIMEOUTS.get(component, SERVICE_STOP_TIMEOUT)
        base_env = dict(os.environ)
        base_env["PYTHONUNBUFFERED"] = "1"
        if component == "mongo":
            port = c.port_of("mongo")
            argv = [
                str(self._venv_bin("secantusd-py")),
                "--config", str(self._secantus_config()),
                "--host", HOST,
                "--port", str(port),
                "--storage-path", str(c.data_dir("mongo")),
                # Without it a SIGKILL loses the last acknowledged commits; with it none
                # (what a real replica set promises for w:"majority").
                "--sync-on-commit",
                "--cache-size", "256M",
            ]  # fmt: skip
            if c.enable_test_commands:
                argv.append("--enable-test-commands")
            return _Launch(
                argv,
                c.root,
                base_env,
                lambda: probes.mongo_ready(HOST, port),
                timeout,
                stop_timeout,
            )
        if component == "kafka":
            node = self._kafka_node(instance)
            own, bootstrap, replication = (
                f"{HOST}:{c.port_of(instance)}",
                c.kafka_bootstrap,
                c.kafka_replication,
            )
            argv = [
                "java",
                *c.kafka_heap_opts,
                f"-Dlog4j2.configurationFile={KAFKA_LOG4J_CONFIG}",
                "-cp", f"{c.kafka_libs}/*",
                "kafka.Kafka",
                str(self._kafka_properties(instance)),
            ]  # fmt: skip
            return _Launch(
                argv,
                c.root,
                base_env,
                # This node answers and the cluster lists it as a live broker.
                lambda: probes.kafka_ready(own, node_id=node),
                timeout,
                stop_timeout,
                after_ready=lambda: probes.kafka_topics_ready(bootstrap, replication=replication),
            )
        if component == "redis":
            port = c.port_of("redis")
            argv = [
                "redis-server",
                "--bind", HOST,
                "--port", str(port),
                "--dir", str(c.data_dir("redis")),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
            ]  # fmt: skip
            return _Launch(
                argv,
                c.root,
                base_env,
                lambda: probes.redis_ready(HOST, port),
                timeout,
                stop_timeout,
            )
        if component == FAULT_PROXY:
            return self._plan_toxiproxy(base_env, timeout, stop_timeout)
        if component == "smtp":
            port = c.port_of("smtp")
            argv = [
                str(c.python), "-m", "stack.smtp_sink",
                "--host", HOST, "--port", str(port), "--dir", str(c.smtp_dir),
            ]  # fmt: skip
            return _Launch(
                argv,
                REPO_ROOT,
                base_env,
                lambda: probes.smtp_ready(HOST, port),
                timeout,
                stop_timeout,
            )
        if component == "issuer":
            port = c.port_of("issuer")
            argv = [
                str(c.python), "-m", "stack.issuer",
                "--host", HOST, "--port", str(port),
                "--issuer", c.issuer_url, "--key", str(c.issuer_key_path),
            ]  # fmt: skip
            return _Launch(
                argv,
                REPO_ROOT,
                base_env,
                lambda: probes.http_ready(HOST, port, "/jwks.json"),
                timeout,
                stop_timeout,
            )
        if component == "keycloak":
            return self._plan_keycloak(base_env, timeout, stop_timeout)
        if component == "jaeger":
            from stack.gotools import JAEGER  # not at import: `python -m stack.gotools` runs first

            if not JAEGER.installed():
                raise StackError(
                    "jaeger",
                    f"{JAEGER.binary} is not built: `python -m stack.gotools jaeger` builds it "
                    "from the Go module proxy (a few minutes, once)",
                )
            port = c.port_of("jaeger")
            argv = [str(JAEGER.binary), "--config", str(self._jaeger_config())]
            return _Launch(
                argv,
                c.root,
                base_env,
                lambda: probes.http_ready(HOST, port, "/api/services"),
                timeout,
                stop_timeout,
            )
        # A service: python -m <its module>, configured entirely through its environment.
        process = service_process(component)
        if not process.main_path.is_file():
            where = process.main_path.relative_to(REPO_ROOT)
            raise StackError(instance, f"{where} does not exist (not written yet?)")
        service_env = {**base_env, **c.service_env(), **process.env}
        # Which issuer the order API trusts: Keycloak's realm when this stack runs it.
        service_env.update(c.auth_env(keycloak=self.is_running("keycloak")))
        if self.is_running("jaeger"):
            # Tracing is off unless an endpoint is set (shared/tracing.py).
            service_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = c.otlp_endpoint
        if component == "console":
            service_env.update(c.console_env())
            service_env[CONSOLE_TOKEN_ENV] = console_token(c)[0]
            if self.is_running("jaeger"):
                service_env["CONSOLE_JAEGER_URL"] = c.jaeger_url
        port_env = process.port_env
        if env and port_env in env:
            port = int(env[port_env])
        elif instance == component:
            port = c.port_of(component)
        else:
            port = self._extra_ports.get(instance) or free_port()
        if instance != component:
            self._extra_ports[instance] = port
        service_env[port_env] = str(port)
        service_env.update(env or {})
        argv = [str(c.python), "-m", process.module]
        return _Launch(
            argv,
            REPO_ROOT,
            service_env,
            lambda: probes.http_ready(HOST, port),
            timeout,
            stop_timeout,
        )

    def _plan_toxiproxy(self, env: dict[str, str], timeout: float, stop_timeout: float) -> _Launch:
        from stack.gotools import TOXIPROXY  # not at import: `python -m stack.gotools` runs first

        c = self.config
        if not TOXIPROXY.installed():
            raise StackError(
                FAULT_PROXY,
                f"{TOXIPROXY.binary} is not built: `python -m stack.gotools toxiproxy-server` "
                "(or `make test-tools`) builds it",
            )
        argv = [str(TOXIPROXY.binary), "-host", HOST, "-port", str(c.port_of(FAULT_PROXY))]
        client = self.toxiproxy()
        routes = {
            server: (
                "{}:{}".format(*c.proxy_address(server)),
                "{}:{}".format(*c.proxy_upstream(server)),
            )
            for server in c.proxied_servers
        }

        def create_proxies() -> bool:
            # One proxy per server, created once; a server that is down only makes its
            # proxy's connections fail, like a direct connection would.
            try:
                client.ensure_proxies(routes)
            except Exception:
                return False
            return True

        return _Launch(
            argv,
            c.root,
            env,
            lambda: probes.http_ready(HOST, c.port_of(FAULT_PROXY), "/version"),
            timeout,
            stop_timeout,
            after_ready=create_proxies,
        )

    def _plan_keycloak(self, env: dict[str, str], timeout: float, stop_timeout: float) -> _Launch:
        c = self.config
        stack_dir = REPO_ROOT / ".stack"
        if not keycloak.installed(stack_dir):
            raise StackError(
                "keycloak",
                f"Keycloak {keycloak.KEYCLOAK_VERSION} is not resolved: `python -m stack up "
                "--with keycloak` fetches it from Maven Central (177 MB, once)",
            )
        keycloak.prepare_import(stack_dir)
        port = c.port_of("keycloak")
        return _Launch(
            keycloak.start_argv(stack_dir, HOST, port),
            c.root,
            {**env, **keycloak.java_env()},
            # The realm answers its discovery document once the import is done.
            lambda: probes.http_ready(
                HOST, port, f"/realms/{KEYCLOAK_REALM}/.well-known/openid-configuration"
            ),
            timeout,
            stop_timeout,
        )

    def _venv_bin(self, name: str) -> Path:
        candidate = self.config.python.parent / name
        if candidate.exists():
            return candidate
        found = shutil.which(name)
        if found is None:
            raise StackError(name, f"{name} not found next to {self.config.python} or on PATH")
        return Path(found)

    def _secantus_config(self) -> Path:
        # An explicit (empty) config file turns off SecantusDB's auto-discovery of
        # ./secantusd.toml and ~/.secantus/, so a stray file never changes the stack.
        path = self.config.root / "conf" / "secantusd.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("# flags on the command line; this file only disables discovery\n")
        self.config.data_dir("mongo").mkdir(parents=True, exist_ok=True)
        return path

    def _jaeger_config(self) -> Path:
        """Jaeger v2's all-in-one pipeline (OTLP/HTTP in, memory store, query API and UI) on
        this stack's ports, listening on 127.0.0.1 only."""
        c = self.config
        path = c.root / "conf" / "jaeger.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            JAEGER_CONFIG.format(
                host=HOST,
                otlp=c.port_of("jaeger_otlp"),
                ui=c.port_of("jaeger"),
                grpc=c.port_of("jaeger_grpc"),
            )
        )
        return path

    # -- kafka ------------------------------------------------------------------------------------
    def _kafka_node(self, instance: str) -> int:
        """Node id of ``instance``; ValueError naming it when this stack has no such node."""
        node = kafka_node_id(instance)
        if node > self.config.kafka_brokers:
            raise ValueError(
                f"{instance}: this stack runs {self.config.kafka_brokers} Kafka broker(s) "
                f"({', '.join(self.config.kafka_nodes)}); `python -m stack up --kafka-brokers N` "
                "starts a cluster"
            )
        return node

    def _record_kafka_brokers(self) -> None:
        """Record the cluster size the Kafka data is formatted for; refuse another one.

        A node formatted for one quorum cannot join another (its metadata log names the
        cluster and its voters), so a stack keeps its size until ``down --wipe``.
        """
        c = self.config
        recorded = recorded_kafka_brokers(c.root)
        formatted = (c.data_dir("kafka") / "meta.properties").exists()
        if recorded is not None and recorded != c.kafka_brokers and formatted:
            raise StackError(
                "kafka",
                f"the Kafka data under {c.data_root} belongs to a cluster of {recorded} "
                f"broker(s), not {c.kafka_brokers}: start it with --kafka-brokers {recorded}, "
                "or `python -m stack down --wipe` first",
            )
        c.kafka_brokers_path.parent.mkdir(parents=True, exist_ok=True)
        c.kafka_brokers_path.write_text(f"{c.kafka_brokers}\n")

    def _kafka_properties(self, instance: str = "kafka") -> Path:
        c = self.config
        node = self._kafka_node(instance)
        port, controller = c.port_of(instance), c.port_of(f"{instance}_controller")
        proxied, via_proxy = c.port_of(f"{instance}_proxied"), c.proxy_address(instance)[1]
        replication = c.kafka_replication
        voters = ",".join(
            f"{kafka_node_id(n)}@{HOST}:{c.port_of(f'{n}_controller')}" for n in c.kafka_nodes
        )
        props = {
            # Combined broker+controller nodes (KRaft, no ZooKeeper): every node is a voter of
            # the controller quorum, so a cluster of three keeps a quorum with one node away.
            "process.roles": "broker,controller",
            "node.id": str(node),
            "controller.quorum.voters": voters,
            # PROXIED is a listener of its own for clients routed through the fault proxy:
            # metadata answers advertise the listener a request came in on, so a client that
            # bootstrapped through the proxy is sent back to the proxy, never around it.
            "listeners": (
                f"PLAINTEXT://{HOST}:{port},PROXIED://{HOST}:{proxied},"
                f"CONTROLLER://{HOST}:{controller}"
            ),
            "advertised.listeners": f"PLAINTEXT://{HOST}:{port},PROXIED://{HOST}:{via_proxy}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(c.data_dir(instance)),
            "num.partitions": str(TOPIC_PARTITIONS),
            # One rule for every topic (shared.kafka.TopicReplication): ours, created by
            # ensure_topics, and Kafka's internal ones, created by the brokers on first use.
            # A single node cannot replicate: 1 and 1; three nodes: RF 3, min ISR 2.
            "default.replication.factor": str(replication.factor),
            "min.insync.replicas": str(replication.min_insync),
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": str(replication.factor),
            "transaction.state.log.replication.factor": str(replication.factor),
            "transaction.state.log.min.isr": str(replication.min_insync),
            "share.coordinator.state.topic.replication.factor": str(replication.factor),
            "share.coordinator.state.topic.min.isr": str(replication.min_insync),
            # The first consumer-group join and the first transactional producer each create an
            # internal topic; at the default 50 partitions that alone took 10-15 s on two busy
            # cores. One node gains nothing from 50; as many as our topics have.
            "offsets.topic.num.partitions": str(TOPIC_PARTITIONS),
            "transaction.state.log.num.partitions": str(TOPIC_PARTITIONS),
            # A mistyped topic name must be an error, not a silently created topic.
            "auto.create.topics.enable": "false",
            # Tests start and stop consumers all the time; do not wait 3 s for more members.
            "group.initial.rebalance.delay.ms": "0",
        }
        name = "kafka.properties" if instance == "kafka" else f"{instance}.properties"
        path = c.root / "conf" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _kafka_cluster_id(self) -> str:
        """The cluster id every node is formatted with: one per stack, kept in its conf."""
        path = self.config.root / "conf" / "kafka-cluster-id"
        if path.is_file():
            return path.read_text().strip()
        cluster_id = kafka_cluster_id()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cluster_id + "\n")
        return cluster_id

    def _format_kafka_storage(self, instance: str = "kafka") -> None:
        """Format a node's KRaft log directory once (Kafka's own storage tool); later starts
        reuse it."""
        c = self.config
        if not any(c.kafka_libs.glob("kafka_2.13-*.jar")):
            raise StackError(
                instance, f"no Kafka jars in {c.kafka_libs}: run `make setup` to fetch them"
            )
        data = c.data_dir(instance)
        if (data / "meta.properties").exists():
            return
        data.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_path(instance)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            "java", "-Xmx256m", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J_CONFIG}",
            "-cp", f"{c.kafka_libs}/*",
            "kafka.tools.StorageTool", "format",
            "-t", self._kafka_cluster_id(),
            "-c", str(self._kafka_properties(instance)),
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            log.write(f"\n=== stack: formatting kafka storage: {argv}\n".encode())
            log.flush()
            result = subprocess.run(
                argv, cwd=c.root, stdout=log, stderr=subprocess.STDOUT, timeout=120, check=False
            )
        if result.returncode != 0:
            raise StackError(
                instance, f"storage format failed with code {result.returncode}", log_path
            )

    # -- process bookkeeping ----------------------------------------------------------------------
    def _pid_file(self, instance: str) -> Path:
        component_of(instance)  # the name becomes a path: only well-formed names
        return self.config.run_root / f"{instance}.json"

    def _read_pid_file(self, instance: str) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads(self._pid_file(instance).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return record

    def _pid(self, instance: str) -> int | None:
        """PID of the running instance, or None (reaping it if it was our child and exited)."""
        proc = self._procs.get(instance)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        record = self._read_pid_file(instance)
        if record is None or not isinstance(record.get("pid"), int):
            return None
        pid: int = record["pid"]
        # Only the process this stack started: same pid *and* start time (a recycled pid, or a
        # pid file naming some other process, is not ours and is never signalled). Ours also
        # lead their own process group, which is what stop/kill signal.
        identity = _identity(pid)
        if identity is None or [*identity] != [record.get("boot_id"), record.get("started")]:
            return None
        try:
            if os.getpgid(pid) != pid:
                return None
        except ProcessLookupError:
            return None
        return pid if _pid_alive(pid) else None

    def _exit_code(self, instance: str) -> int | None:
        proc = self._procs.get(instance)
        return proc.poll() if proc is not None else None

    def _wait_exit(self, instance: str, pid: int, timeout: float) -> bool:
        proc = self._procs.get(instance)
        if proc is not None and proc.pid == pid:
            try:
                proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def _forget(self, instance: str) -> None:
        self._procs.pop(instance, None)
        self._pid_file(instance).unlink(missing_ok=True)

    def _known_instances(self, include_all: bool = False) -> list[str]:
        names: list[str] = list(ALL) if include_all else []
        if include_all:
            names[names.index("kafka") + 1 : names.index("kafka") + 1] = self.config.kafka_nodes[1:]
        names += [i for i in self._procs if i not in names]
        if self.config.run_root.is_dir():
            names += sorted(
                p.stem for p in self.config.run_root.glob("*.json") if p.stem not in names
            )
        return [n for n in names if _is_known(n)]

    @staticmethod
    def _shutdown_order(instances: Iterable[str]) -> list[str]:
        # Services first (they drain into the infrastructure), then infra in reverse start order.
        rank = {name: i for i, name in enumerate(reversed(KNOWN))}
        return sorted(instances, key=lambda i: rank[component_of(i)])


def _is_known(instance: str) -> bool:
    try:
        component_of(instance)
    except ValueError:
        return False
    return True


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


__all__ = [
    "FAULT_PROXY",
    "INFRA",
    "SERVICES",
    "Stack",
    "StackError",
    "component_of",
    "service_exists",
    "tail",
]
