"""Fixtures the integration tests of several folders share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stack import FAULT_PROXY, Stack
from stack.toxiproxy import Toxiproxy


@pytest.fixture
def fault_proxy(stack: Stack) -> Iterator[Toxiproxy]:
    """The stack's fault proxy, running, every proxy enabled and clean before and after."""
    stack.start(FAULT_PROXY)
    client = stack.toxiproxy()
    client.reset()
    try:
        yield client
    finally:
        client.reset()
