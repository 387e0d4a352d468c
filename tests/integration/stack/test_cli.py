"""``python -m stack`` drives a stack another invocation started, through its pid files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stack.config import StackConfig


def _cli(root: Path, config: StackConfig, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STACK_ROOT": str(root)}
    env.update({f"STACK_{name.upper()}_PORT": str(port) for name, port in config.ports.items()})
    return subprocess.run(
        [sys.executable, "-m", "stack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


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


def test_cli_names_an_unknown_component(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path)
    result = _cli(tmp_path, config, "stop", "mongodb")
    assert result.returncode == 2
    assert "unknown component 'mongodb'" in result.stderr
