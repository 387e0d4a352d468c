"""Fixtures shared by the end-to-end tests: ``pipeline`` (per module) starts order, relay,
inventory and email as processes on the module's ``stack``, and stops them afterwards;
``cluster_stack`` is the three-node Kafka stack the broker and slot scenarios share (started
once per session, on first use)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from stack import Stack
from tests.e2e.chaos.harness import Pipeline
from tests.stacks import CLUSTER_BROKERS, running_stack, session_kafka_brokers


@pytest.fixture(scope="session")
def cluster_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack with a three-node Kafka cluster (RF 3, min.insync.replicas 2): the session's own
    when it already has that many nodes, else one started here and shared by the modules that
    override their ``stack`` with it."""
    if session_kafka_brokers(request.config) >= CLUSTER_BROKERS:
        yield request.getfixturevalue("session_stack")
        return
    yield from running_stack(tmp_path_factory, CLUSTER_BROKERS)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pipeline(stack: Stack) -> AsyncIterator[Pipeline]:
    running = Pipeline(stack)
    await running.prepare()
    try:
        yield running
    finally:
        for instance in list(running.started_with):
            try:
                await running.stop(instance)
            except Exception as exc:  # keep stopping the others; the stack fixture reaps all
                print(f"e2e: could not stop {instance}: {exc}")
        await running.close()
