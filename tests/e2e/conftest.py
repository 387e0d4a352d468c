"""Fixtures shared by the end-to-end tests: ``pipeline`` (per module) starts order, relay,
inventory and email as processes on the session's ``stack``, and stops them afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from stack import Stack
from tests.e2e.chaos.harness import Pipeline


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
