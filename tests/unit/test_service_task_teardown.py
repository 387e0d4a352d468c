"""The test teardown of in-process services: a consumer task that crashed fails the test."""

from __future__ import annotations

import asyncio

import pytest

from tests.background import finish_service_tasks


async def _exits(code: int) -> int:
    return code


async def _crashes() -> int:
    raise RuntimeError("consumer bug")


async def _hangs() -> int:
    await asyncio.Event().wait()
    return 0


async def test_a_crashed_service_task_fails_the_teardown_by_name() -> None:
    tasks = {"inventory": asyncio.create_task(_exits(0)), "email": asyncio.create_task(_crashes())}
    with pytest.raises(AssertionError, match=r"email crashed: RuntimeError\('consumer bug'\)"):
        await finish_service_tasks(tasks, timeout=5)
    assert tasks["inventory"].done() and tasks["email"].done()


async def test_a_non_zero_exit_or_a_task_that_will_not_stop_fails_the_teardown() -> None:
    hung = asyncio.create_task(_hangs())
    tasks = {"inventory": asyncio.create_task(_exits(1)), "email": hung}
    with pytest.raises(AssertionError, match="inventory exited 1; email did not stop"):
        await finish_service_tasks(tasks, timeout=0.1)
    assert hung.cancelled()


async def test_services_that_drained_cleanly_pass_the_teardown() -> None:
    await finish_service_tasks({"inventory": asyncio.create_task(_exits(0))}, timeout=5)
