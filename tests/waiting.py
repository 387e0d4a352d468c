"""Condition polling for tests: wait for a state, never for a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not become true in time (an AssertionError, so pytest reports it)."""


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]],
    *,
    timeout: float,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], object],
    *,
    # A deadline parameter (not asyncio.timeout) so the failure names the condition awaited.
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.05,
    message: str = "condition",
) -> object:
    """Poll ``predicate`` (sync or async) until it returns a truthy value and return that value.

    Raises :class:`WaitTimeout` after ``timeout`` seconds, naming ``message`` and the last value
    (or the last exception the predicate raised: an exception counts as "not yet").
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last = result
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {message} (last: {last!r})")
        await asyncio.sleep(interval)
