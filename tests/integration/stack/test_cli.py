"""``python -m stack`` drives a stack another invocation started, through its pid files."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stack.config import StackConfig
from tests.stacks import stack_cli


def _cli(
    root: Path, config: StackConfig, *args: str, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    assert config.root == root.resolve()
    return stack_cli(config, *args, unset=unset)


def _status(root: Path, config: StackConfig) -> dict[str, dict[str, object]]:
    result = _cli(root, config, "status", "--json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, dict[str, object]] = json.loads(result.stdout)
    return parsed


def test_cli_detached_up_is_controlled_by_later_invocations(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path)
    try:
        up = _cli(tmp_path, config, "up", "--detach", "redis", "smtp")
        assert up.returncode == 0, up.stdout + up.stderr
        status = _status(tmp_path, config)
        assert status["redis"]["ready"] and status["smtp"]["ready"]
        assert status["redis"]["port"] == config.port_of("redis")
        assert not status["mongo"]["running"]

        assert _cli(tmp_path, config, "kill", "redis").returncode == 0
        assert not _status(tmp_path, config)["redis"]["running"]
        assert _cli(tmp_path, config, "start", "redis").returncode == 0
        assert _status(tmp_path, config)["redis"]["ready"]

        logs = _cli(tmp_path, config, "logs", "smtp")
        assert "smtp sink listening" in logs.stdout
    finally:
        down = _cli(tmp_path, config, "down", "--wipe")
    assert down.returncode == 0, down.stderr
    status = _status(tmp_path, config)
    assert not any(entry["running"] for entry in status.values())
    assert not (tmp_path / "data").exists()


def test_up_starts_the_console_and_prints_its_generated_token_once(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path)
    try:
        up = _cli(tmp_path, config, "up", "--detach", "console", unset=("CONSOLE_TOKEN",))
        assert up.returncode == 0, up.stdout + up.stderr
        token = config.console_token_path.read_text().strip()
        assert up.stdout.count(token) == 1, up.stdout
        assert f"console: http://127.0.0.1:{config.port_of('console')}/" in up.stdout
        # The console runs with exactly that token: it signs a script in, nobody else.
        url = f"http://127.0.0.1:{config.port_of('console')}/orders?id=x"
        signed_in = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert signed_in.status_code == 303, signed_in.text
        assert httpx.get(url, timeout=10).status_code == 401
    finally:
        down = _cli(tmp_path, config, "down", "--wipe")
    assert down.returncode == 0, down.stderr


def test_cli_names_an_unknown_component(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path)
    result = _cli(tmp_path, config, "stop", "mongodb")
    assert result.returncode == 2
    assert "unknown component 'mongodb'" in result.stderr


@contextlib.contextmanager
def _bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process the stack did not start, leading its own process group like a component."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    "name",
    [
        "relay-/../../x",
        "relay-",
        "relay-A",
        "relay_2",
        "relay--2",
        "relay-2/x",
        "mongo-2",
        "relays",
    ],
)
def test_cli_refuses_a_malformed_instance_name_and_names_it(tmp_path: Path, name: str) -> None:
    config = StackConfig.for_tests(tmp_path)
    for action in ("stop", "kill", "start", "restart", "logs"):
        result = _cli(tmp_path, config, action, name)
        assert result.returncode == 2, (action, result.stdout, result.stderr)
        assert repr(name) in result.stderr, (action, result.stderr)


def test_cli_reads_no_pid_file_outside_its_run_directory(tmp_path: Path) -> None:
    # relay-/../../x resolves to <root>/x.json once run/relay-/ exists: the old CLI read the
    # pid there and signalled it.
    config = StackConfig.for_tests(tmp_path)
    (tmp_path / "run" / "relay-").mkdir(parents=True)
    with _bystander() as bystander:
        (tmp_path / "x.json").write_text(json.dumps({"pid": bystander.pid, "component": "relay"}))
        result = _cli(tmp_path, config, "kill", "relay-/../../x")
        assert result.returncode == 2, result.stdout + result.stderr
        assert bystander.poll() is None, "the CLI signalled a process it did not start"


def test_cli_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    # A stale or planted pid file naming a live process group leader that is not ours (a
    # recycled pid looks exactly like this): stop/kill must leave it alone.
    config = StackConfig.for_tests(tmp_path)
    (tmp_path / "run").mkdir()
    with _bystander() as bystander:
        record = {"pid": bystander.pid, "component": "redis", "port": config.port_of("redis")}
        (tmp_path / "run" / "redis.json").write_text(json.dumps(record))
        assert not _status(tmp_path, config)["redis"]["running"]
        for action in ("kill", "stop"):
            result = _cli(tmp_path, config, action, "redis")
            assert result.returncode == 0, result.stdout + result.stderr
            assert bystander.poll() is None, f"`{action} redis` signalled a stranger"
