"""Suite-wide fixtures: one embedded stack for the whole session, and tier markers by folder.

The ``stack`` fixture starts MongoDB (SecantusDB, test commands on), Kafka (topics created),
Redis and the SMTP sink on free ports in a temporary directory, so the suite never collides with
a running ``make up``. Kafka is one broker unless ``--kafka-brokers N`` (or
``STACK_KAFKA_BROKERS=N``) asks for a cluster of N nodes. Tests share it: they assert only on
their own ids and restore any component they stop or kill (and the autouse fixture below
restarts one they forgot).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stack import Stack
from tests.stacks import running_stack, session_kafka_brokers

TESTS_ROOT = Path(__file__).resolve().parent
_TIER_BY_FOLDER = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kafka-brokers",
        type=int,
        default=None,
        help="Kafka nodes of the session's embedded stack (default: STACK_KAFKA_BROKERS or 1)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier from its folder: tests/unit -> ``unit`` and so on."""
    for item in items:
        try:
            relative = Path(str(item.path)).resolve().relative_to(TESTS_ROOT)
        except ValueError:
            continue
        tier = _TIER_BY_FOLDER.get(relative.parts[0]) if relative.parts else None
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def session_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The session's embedded stack (see the module docstring)."""
    yield from running_stack(tmp_path_factory, session_kafka_brokers(request.config))


@pytest.fixture(scope="session")
def stack(session_stack: Stack) -> Stack:
    """A running embedded stack (infra only; tests start services themselves with
    ``stack.start("order", env=...)``). A module that needs another shape (a Kafka cluster)
    overrides this fixture."""
    return session_stack


@pytest.fixture(autouse=True)
def _restore_stopped_infra(request: pytest.FixtureRequest) -> None:
    """Before each test that uses ``stack``: resume or restart any infra component an earlier
    test left paused, stopped or killed, so one failed chaos test does not fail every test
    after it."""
    if "stack" not in request.fixturenames:
        return
    running: Stack = request.getfixturevalue("stack")
    for name in running.config.infra_instances:
        if running.is_paused(name):
            running.resume(name)
        if not running.is_running(name):
            running.start(name)
