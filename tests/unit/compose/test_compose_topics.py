"""The topics compose creates are the embedded stack's: every ``*.dlq`` keeps its records
``shared.contracts.DLQ_RETENTION_SECONDS``, as ``shared.kafka.topic_config`` creates them.

The email service's per-order state is sized to outlive a replay at the end of that retention,
so a broker default deciding it instead would let a late replay find the state gone. The script
is run for real, with a stand-in for ``kafka-topics.sh`` that records what it was asked to do,
and with the environment compose-go says the initialiser gets (one broker and the ``ha`` profile).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.contracts import ALL_TOPICS, DLQ_RETENTION_SECONDS, DLQ_SUFFIX
from tests.unit.compose.compose_helpers import REPO

SCRIPT = REPO / "docker" / "kafka" / "create-topics.sh"
BASH = shutil.which("bash")
# Records one line per `--create` call: its arguments, joined by a unit separator (none has one).
RECORDER = (
    '#!/bin/sh\n[ "$3" = --create ] || exit 0\n(IFS=$(printf "\\037"); echo "$*") >> "$CALLS"\n'
)


def _initialiser_env(model: dict[str, Any], service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (model["services"][service].get("environment") or {}).items()}


def _run_script(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert BASH is not None, "bash is needed to run docker/kafka/create-topics.sh"
    recorder = tmp_path / "kafka-topics.sh"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    full_env = {"PATH": os.environ["PATH"], **env, "KAFKA_TOPICS": str(recorder)}
    full_env["CALLS"] = str(calls)
    return subprocess.run(
        [BASH, str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=30, check=False
    )


def _configs_by_topic(tmp_path: Path) -> dict[str, dict[str, str]]:
    """topic -> its ``--config`` settings, from the recorded ``--create`` calls."""
    created: dict[str, dict[str, str]] = {}
    for line in (tmp_path / "calls").read_text().splitlines():
        args = line.split("\x1f")
        topic = args[args.index("--topic") + 1]
        configs = [args[i + 1] for i, arg in enumerate(args) if arg == "--config"]
        created[topic] = dict(c.split("=", 1) for c in configs)
    return created


@pytest.mark.parametrize(
    ("model_fixture", "service"), [("compose", "kafka-init"), ("compose_ha", "kafka-init-ha")]
)
def test_compose_creates_every_dead_letter_topic_with_the_contract_retention(
    model_fixture: str, service: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model: dict[str, Any] = request.getfixturevalue(model_fixture)
    env = _initialiser_env(model, service)
    assert int(env["DLQ_RETENTION_MS"]) == DLQ_RETENTION_SECONDS * 1000

    ran = _run_script(env, tmp_path)

    assert ran.returncode == 0, ran.stderr
    created = _configs_by_topic(tmp_path)
    assert set(created) == set(ALL_TOPICS)
    for topic, configs in created.items():
        if topic.endswith(DLQ_SUFFIX):
            assert configs.get("retention.ms") == str(DLQ_RETENTION_SECONDS * 1000), topic
        else:
            # A source topic keeps the broker's retention, as shared.kafka.topic_config leaves it.
            assert "retention.ms" not in configs, topic


def test_the_topic_script_refuses_to_run_without_a_dead_letter_retention(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    env = _initialiser_env(compose, "kafka-init")
    del env["DLQ_RETENTION_MS"]

    ran = _run_script(env, tmp_path)

    assert ran.returncode != 0
    assert "DLQ_RETENTION_MS must be set" in ran.stderr
    assert (tmp_path / "calls").read_text() == ""
