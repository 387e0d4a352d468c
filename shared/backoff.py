"""Capped exponential backoff with jitter, and a sleep that a shutdown can interrupt."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of ``initial * factor**n`` capped at ``maximum``, with +/-20% jitter.

    Jitter keeps several instances that lost the same dependency from retrying in lock-step.
    """

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    failures: int = field(default=0, init=False)

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * self.factor**self.failures)
        self.failures += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.failures = 0


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` unless ``stop`` is set first; True when asked to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()
