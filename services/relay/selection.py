"""What a slot's round sends: the next Pending events of the slot (a read-ahead over the
backlog) and the unpublished predecessors of the events chosen.

Nothing here writes or sends; :mod:`services.relay.publisher` plans the round from what these
return (:func:`services.relay.rules.plan_batch`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor

from services.relay.outbox_event import Malformed, OutboxEvent, read_event
from shared.contracts import OutboxStatus
from shared.outbox import FIRST_VERSION, OutboxField

# Read-ahead limits of the backlog cursor (see ReadAhead.next_batch).
CURSOR_MAX_BATCHES = 40
CURSOR_MAX_AGE_SECONDS = 30.0


class ReadAhead:
    """The Pending events of one slot, oldest first, read through one cursor per backlog."""

    def __init__(self, outbox: AsyncCollection[dict[str, Any]], slot: int, batch_size: int) -> None:
        self._outbox = outbox
        self._slot = slot
        self._batch_size = batch_size
        self._cursor: AsyncCursor[dict[str, Any]] | None = None
        self._opened = 0.0
        self._batches = 0
        # Events this publisher marked Published since the cursor opened: the cursor may still
        # hold them (read before the mark), and they must not go out twice.
        self.published_ids: set[ObjectId] = set()

    async def next_batch(self) -> tuple[list[OutboxEvent], list[Malformed]]:
        """The next (up to) ``batch_size`` Pending events, oldest first, and the documents among
        them that could not be read.

        A backlog is read through one cursor, ``batch_size`` documents per getMore, instead of
        one query per batch: the scan (and, on servers that sort in memory, the sort) is paid
        once per backlog, not once per batch. The cursor is only a read-ahead: it is dropped
        after any failure, when exhausted, and after ``CURSOR_MAX_BATCHES`` or
        ``CURSOR_MAX_AGE_SECONDS``, so new and retried events are never kept waiting long.
        Documents it returns can be stale only in one way, already published by this holder
        (pulled in as a predecessor, or sent from the change stream): those are skipped.
        """
        if self._cursor is not None and (
            self._batches >= CURSOR_MAX_BATCHES
            or time.monotonic() - self._opened > CURSOR_MAX_AGE_SECONDS
        ):
            await self.drop()
        if self._cursor is None:
            self._cursor = await self.open_cursor()
            self._opened, self._batches = time.monotonic(), 0
        docs = await self._cursor.to_list(self._batch_size)
        self._batches += 1
        if len(docs) < self._batch_size:
            await self.drop()  # exhausted: the next round starts a fresh scan
        events: list[OutboxEvent] = []
        malformed: list[Malformed] = []
        for doc in docs:
            if doc[OutboxField.ID] in self.published_ids:
                continue
            event = read_event(doc, malformed)
            if event is not None:
                events.append(event)
        return events, malformed

    async def open_cursor(self) -> AsyncCursor[dict[str, Any]]:
        """The scan of the slot's Pending events (the very query a slot's holder sends)."""
        f = OutboxField
        # Aggregates with a Failed event are skipped entirely: their later events must wait, and
        # selecting them would let a long blocked backlog fill every batch and starve the rest.
        failed_aggregates = await self._outbox.distinct(
            f.AGGREGATE_ID, {f.SLOT: self._slot, f.STATUS: OutboxStatus.FAILED.value}
        )
        query: dict[str, Any] = {f.SLOT: self._slot, f.STATUS: OutboxStatus.PENDING.value}
        if failed_aggregates:
            query[f.AGGREGATE_ID] = {"$nin": failed_aggregates}
        self.published_ids.clear()
        # Sorted by the index {slot: 1, status: 1, createdAt: 1} alone, so MongoDB walks the
        # index; a tie-breaker (such as _id) would force an in-memory sort of the whole backlog.
        # Ties need no order: per-aggregate order comes from the version.
        return (
            self._outbox.find(query)
            .sort([(f.SLOT, 1), (f.STATUS, 1), (f.CREATED_AT, 1)])
            .batch_size(self._batch_size)
        )

    async def drop(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            with contextlib.suppress(Exception):
                await cursor.close()


async def find_predecessors(
    outbox: AsyncCollection[dict[str, Any]],
    batch: Sequence[OutboxEvent],
    malformed: list[Malformed],
    known: Mapping[str, int] | None = None,
) -> tuple[list[OutboxEvent], dict[str, int]]:
    """Unpublished earlier events of the batch's aggregates that are not in the batch.

    Returns the Pending ones (sent in their place in version order, so a batch holding v1 and v4
    never lets v4 overtake v2 and v3, and a batch made only of later versions still makes
    progress) and, per aggregate, the lowest Failed version (nothing at or after it may go).
    Only aggregates whose versions in the batch do not run ``m, m+1, ... k`` without a gap can
    have one, where ``m`` is the first version or one past the version ``known`` says this holder
    published last (every earlier one was published before it). For the common cases (an aggregate's
    first event, the next event of an aggregate this holder published) no query is made. An
    unreadable predecessor is added to ``malformed`` and holds its whole aggregate back.
    """
    f = OutboxField
    versions: dict[str, set[int]] = {}
    for event in batch:
        versions.setdefault(event.aggregate_id, set()).add(event.aggregate_version)
    highest = {agg: max(v) for agg, v in versions.items()}
    known = known or {}
    # Nothing can be missing when an aggregate's versions in the batch run without a gap from
    # its first version, or from one past the last version known to be published.
    suspects = [
        agg
        for agg, v in versions.items()
        if min(v) > max(FIRST_VERSION, known.get(agg, 0) + 1) or len(v) != highest[agg] - min(v) + 1
    ]
    if not suspects:
        return [], {}
    cursor = outbox.find(
        {
            f.AGGREGATE_ID: {"$in": suspects},
            f.AGGREGATE_VERSION: {"$lt": max(highest[agg] for agg in suspects)},
            f.STATUS: {"$ne": OutboxStatus.PUBLISHED.value},
            f.ID: {"$nin": [event.id for event in batch] + [bad.id for bad in malformed]},
        }
    )
    extra: list[OutboxEvent] = []
    failed: dict[str, int] = {}
    async for doc in cursor:
        found = read_event(doc, malformed)
        if found is None:
            aggregate = doc.get(f.AGGREGATE_ID)
            if isinstance(aggregate, str):
                failed[aggregate] = 0  # which version it is is unknown: hold all back
            continue
        event = found
        if event.aggregate_version >= highest[event.aggregate_id]:
            continue
        if doc.get(f.STATUS) == OutboxStatus.PENDING.value:
            extra.append(event)
        elif event.aggregate_version < failed.get(event.aggregate_id, event.aggregate_version + 1):
            failed[event.aggregate_id] = event.aggregate_version
    return extra, failed
