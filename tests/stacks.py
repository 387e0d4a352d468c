"""Starting embedded test stacks: the session's, and a Kafka cluster for the modules that need
one (the broker failure scenarios)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Final

import pytest

from stack import INFRA, Stack, StackConfig

# The smallest cluster that keeps every write with one node lost: RF 3, min.insync.replicas 2.
CLUSTER_BROKERS: Final = 3


def session_kafka_brokers(config: pytest.Config) -> int:
    """The session stack's Kafka cluster size: ``--kafka-brokers``, ``STACK_KAFKA_BROKERS``, 1."""
    option: int | None = config.getoption("--kafka-brokers")
    if option is not None:
        return option
    value = os.environ.get("STACK_KAFKA_BROKERS")
    try:
        return int(value) if value else 1
    except ValueError:
        raise pytest.UsageError(
            f"STACK_KAFKA_BROKERS: a number of brokers, got {value!r}"
        ) from None


def running_stack(tmp_path_factory: pytest.TempPathFactory, kafka_brokers: int) -> Iterator[Stack]:
    """An embedded test stack (infra only, ``kafka_brokers`` Kafka nodes) for the life of the
    generator. Set ``STACK_TEST_KEEP=1`` to keep its data and logs."""
    root = tmp_path_factory.mktemp("stack")
    running = Stack(StackConfig.for_tests(root, kafka_brokers=kafka_brokers))
    running.up(INFRA)
    try:
        yield running
    finally:
        running.down(wipe=os.environ.get("STACK_TEST_KEEP") != "1")


def stack_cli(
    config: StackConfig, *args: str, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``python -m stack ARGS`` in another process, on the stack of ``config`` (its root and
    its ports through ``STACK_ROOT`` and ``STACK_<NAME>_PORT``; kafka-2 -> STACK_KAFKA_2_PORT),
    without the caller's variables named in ``unset``. The Kafka cluster size comes from what
    ``up`` recorded under the root, not the caller's ``STACK_KAFKA_BROKERS``."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["STACK_ROOT"] = str(config.root)
    env.pop("STACK_KAFKA_BROKERS", None)
    env.update(
        {
            f"STACK_{name.upper().replace('-', '_')}_PORT": str(port)
            for name, port in config.ports.items()
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "stack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
