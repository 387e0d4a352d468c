"""Suite-wide fixtures: one embedded stack for the whole session, and tier markers by folder.

The ``stack`` fixture starts MongoDB (SecantusDB, test commands on), Kafka (topics created),
Redis and the SMTP sink on free ports in a temporary directory, so the suite never collides with
a running ``make up``. Tests share it: they assert only on their own ids and restore any
component they stop or kill (and the autouse fixture below restarts one they forgot).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack import INFRA, Stack, StackConfig

TESTS_ROOT = Path(__file__).resolve().parent
_TIER_BY_FOLDER = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


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
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running embedded stack (infra only; tests start services themselves with
    ``stack.start("order", env=...)``). Set ``STACK_TEST_KEEP=1`` to keep its data and logs."""
    root = tmp_path_factory.mktemp("stack")
    running = Stack(StackConfig.for_tests(root))
    running.up(INFRA)
    try:
        yield running
    finally:
        running.down(wipe=os.environ.get("STACK_TEST_KEEP") != "1")


@pytest.fixture(autouse=True)
def _restore_stopped_infra(request: pytest.FixtureRequest) -> None:
    """Before each test that uses ``stack``: resume or restart any infra component an earlier
    test left paused, stopped or killed, so one failed chaos test does not fail every test
    after it."""
    if "stack" not in request.fixturenames:
        return
    running: Stack = request.getfixturevalue("stack")
    for name in INFRA:
        if running.is_paused(name):
            running.resume(name)
        if not running.is_running(name):
            running.start(name)
