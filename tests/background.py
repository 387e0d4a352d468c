"""Background service tasks in tests: stop them and let a crash fail the test."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping


async def finish_service_tasks(
    tasks: Mapping[str, asyncio.Task[int]],
    *,
    timeout: float,  # noqa: ASYNC109 - one deadline per task, named in the failure
) -> None:
    """Await every (already told to stop) service task; raise ``AssertionError`` naming each one
    that crashed, exited non-zero or did not drain within ``timeout`` (that one is cancelled).

    A teardown that swallowed these would let a consumer die mid-test while the test still
    passed on what happened before the crash.
    """
    problems: list[str] = []
    for name, task in tasks.items():
        try:
            code = await asyncio.wait_for(task, timeout=timeout)
        except TimeoutError:
            problems.append(f"{name} did not stop within {timeout} s (cancelled)")
        except Exception as exc:
            problems.append(f"{name} crashed: {exc!r}")
        else:
            if code != 0:
                problems.append(f"{name} exited {code}")
    if problems:
        raise AssertionError("; ".join(problems))
