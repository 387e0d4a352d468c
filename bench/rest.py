"""A pipeline at rest: nothing of an earlier window still in it before the next one starts.

The end-to-end phases run their windows one after the other on one pipeline. A window at 50%
of the API's maximum overloads it (the p50 to the reservation was tens of seconds in a full run),
and its settle wait ends after ``settle_seconds`` whether or not every order got through: the
rest is still Pending in an outbox or unread in a topic. A light window started then measures
that backlog (33.5 s p50 at 5/s in the first full run of issue 21), and its CPU window bills the
backlog's work to the light orders. So before each window the phase waits until the pipeline is
at rest: no Pending event in any of its outboxes and no record left unread by any of its
consumer groups (``shared.lag``, which counts what a ``read_committed`` consumer would still
receive), or until a deadline, recorded when it passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from shared.contracts import OutboxStatus
from shared.lag import group_lags
from shared.mongo import make_mongo_client
from shared.outbox import OUTBOX_COLLECTION, OutboxField

# How long a pipeline may take to come to rest; a full run's 50%-load backlog drained in well
# under this on two cores. Past it the next window starts anyway and the wait is recorded.
REST_TIMEOUT_SECONDS: Final = 300.0
# Between two looks at the pipeline.
REST_POLL_SECONDS: Final = 1.0


@dataclass(frozen=True)
class Leftover:
    """What an earlier window left in the pipeline: Pending events and unread records."""

    pending_events: int
    unread_records: int

    @property
    def at_rest(self) -> bool:
        return self.pending_events == 0 and self.unread_records == 0


@dataclass(frozen=True)
class RestWait:
    """How long the wait took, and what was left when it ended (nothing, unless it timed out)."""

    seconds: float
    left: Leftover

    @property
    def timed_out(self) -> bool:
        return not self.left.at_rest


async def wait_for_rest(
    look: Callable[[], Awaitable[Leftover]],
    *,
    within: float = REST_TIMEOUT_SECONDS,
    poll: float = REST_POLL_SECONDS,
) -> RestWait:
    """Look at the pipeline until ``look`` finds it at rest or ``within`` seconds passed."""
    started = time.monotonic()
    while True:
        left = await look()
        waited = time.monotonic() - started
        if left.at_rest or waited >= within:
            return RestWait(waited, left)
        await asyncio.sleep(min(poll, max(0.0, within - waited)))


def pipeline_look(
    mongo_uri: str,
    kafka_bootstrap: str,
    outbox_databases: Sequence[str],
    groups: Mapping[str, Sequence[str]],
) -> Callable[[], Awaitable[Leftover]]:
    """A ``look`` at one pipeline: its outboxes (by database) and its consumer groups (group ->
    the topics it reads)."""

    async def look() -> Leftover:
        client = make_mongo_client(mongo_uri, 30.0, "bench-rest")
        try:
            pending = 0
            for database in outbox_databases:
                pending += await client[database][OUTBOX_COLLECTION].count_documents(
                    {OutboxField.STATUS: OutboxStatus.PENDING.value}
                )
        finally:
            await client.close()
        unread = 0
        for group, topics in groups.items():
            lags = await group_lags(kafka_bootstrap, [group], list(topics))
            unread += sum(lag.total for lag in lags)
        return Leftover(pending, unread)

    return look
