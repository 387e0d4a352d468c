"""Which events a slot's holder may publish straight from the change stream, without reading
them again, and what it remembers to decide that.

The change stream delivers each inserted outbox document. Publishing it as delivered saves the
round trip of selecting it again, but the document is a snapshot taken at the insert, so it is
only trusted while nothing can have happened to the event since:

* it is of this slot, still ``Pending`` with no attempt (as every insert is), and readable;
* it was created after this holder took the slot, by more than the clock skew tolerated between the
  outbox's producer and the relay (:data:`CLOCK_SKEW_SECONDS`: no earlier holder can have published
  or parked it), and at most :data:`FRESH_SECONDS` ago (a stream replayed from a resume token after
  a restart, or lagging far behind, delivers events that may be long published: those go to the
  sweep);
* this holder has not handled it already (:class:`Recent`: the sweep, or an earlier stream
  round, may have sent it, tried it or parked it).

Everything else is left to the sweep, which reads the collection and is the source of truth.
An accepted event is still only sent when it is next in its aggregate's order: the publisher
plans it with its unpublished predecessors (:func:`services.relay.selection.find_predecessors`),
which needs no read when the event is an aggregate's first or follows the last version this holder
published (:class:`PublishedVersions`).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from bson import ObjectId

from services.relay.outbox_event import MalformedEvent, OutboxEvent, utc
from shared.contracts import OutboxStatus
from shared.outbox import OutboxField

# A stream document older than this (by its createdAt) is left to the sweep. Delivery takes
# milliseconds; seconds mean a replay after a restart or a stream far behind.
FRESH_SECONDS: Final = 5.0
# createdAt is stamped by the producer's clock (order API, inventory) and compared with the relay's:
# the rules below hold for clocks up to RELAY_CLOCK_SKEW_SECONDS apart (this default; NTP keeps them
# within milliseconds). A document dated inside the first skew of a tenure, or ahead of the relay's
# clock by more, may be older than it reads: it goes to the sweep, which needs no clock.
CLOCK_SKEW_SECONDS: Final = 2.0
# The largest skew the setting accepts: Recent must outlive a fresh document on skewed clocks.
MAX_CLOCK_SKEW_SECONDS: Final = 10.0
# How long an event this holder handled is remembered: longer than any stream document is
# accepted (FRESH_SECONDS) with both clocks apart by up to MAX_CLOCK_SKEW_SECONDS either way.
RECENT_SECONDS: Final = 30.0
# Aggregates whose last published version is remembered, per slot (the most recent ones: an
# aggregate's next event follows soon or not at all). Forgetting one costs one predecessor query,
# never a wrong decision; 10,000 entries are about 2 MB, times the slots a relay holds.
VERSIONS_KEPT: Final = 10_000


class Recent:
    """The ids of events this holder handled (sent, tried, parked) in the last ``keep`` s."""

    def __init__(
        self, keep: float = RECENT_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._keep = keep
        self._clock = clock
        self._ids: set[ObjectId] = set()
        self._order: deque[tuple[float, ObjectId]] = deque()

    def add(self, ids: Iterable[Any]) -> None:
        now = self._clock()
        self._expire(now)
        for event_id in ids:
            if event_id not in self._ids:
                self._ids.add(event_id)
                self._order.append((now, event_id))

    def __contains__(self, event_id: object) -> bool:
        self._expire(self._clock())
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def _expire(self, now: float) -> None:
        while self._order and now - self._order[0][0] > self._keep:
            self._ids.discard(self._order.popleft()[1])


class PublishedVersions:
    """Per aggregate, the highest version this holder marked Published (so every earlier one
    is Published too: the ordered paths never send a version before its predecessors)."""

    def __init__(self, kept: int = VERSIONS_KEPT) -> None:
        self._kept = kept
        self._versions: OrderedDict[str, int] = OrderedDict()

    def record(self, events: Iterable[OutboxEvent]) -> None:
        for event in events:
            if event.aggregate_version > self._versions.get(event.aggregate_id, 0):
                self._versions[event.aggregate_id] = event.aggregate_version
            self._versions.move_to_end(event.aggregate_id, last=True)
        while len(self._versions) > self._kept:
            self._versions.popitem(last=False)

    def forget(self, aggregates: Iterable[str | None]) -> None:
        """Something of these aggregates was parked: their next events need a real look."""
        for aggregate in aggregates:
            if aggregate is not None:
                self._versions.pop(aggregate, None)

    def of(self, aggregates: Iterable[str]) -> dict[str, int]:
        return {agg: self._versions[agg] for agg in aggregates if agg in self._versions}


def accept_streamed(
    documents: Sequence[Mapping[str, Any]],
    slot: int,
    since: datetime,
    now: datetime,
    recent: Recent,
    skew: timedelta = timedelta(seconds=CLOCK_SKEW_SECONDS),
) -> tuple[list[OutboxEvent], int]:
    """The stream documents this holder may publish as delivered (module docstring), in order
    of delivery and without repeats, and how many of this slot's it left to the sweep."""
    f = OutboxField
    accepted: list[OutboxEvent] = []
    seen: set[Any] = set()
    left = 0
    for doc in documents:
        if doc.get(f.SLOT) != slot:
            continue  # another slot's (it moved, or the routing was stale): not ours to send
        event_id = doc.get(f.ID)
        if event_id in seen or event_id in recent:
            continue  # handled already: the sweep or an earlier round has it in hand
        seen.add(event_id)
        if not _fresh_insert(doc, since, now, skew):
            left += 1
            continue
        try:
            accepted.append(OutboxEvent.from_doc(doc))
        except MalformedEvent:
            left += 1  # the sweep marks it Failed with the reason
    return accepted, left


def _fresh_insert(doc: Mapping[str, Any], since: datetime, now: datetime, skew: timedelta) -> bool:
    f = OutboxField
    created = doc.get(f.CREATED_AT)
    if not isinstance(created, datetime):
        return False
    created = utc(created)
    return (
        doc.get(f.STATUS) == OutboxStatus.PENDING.value
        and not doc.get(f.ATTEMPTS)
        and created >= since + skew
        and created <= now + skew
        and (now - created).total_seconds() <= FRESH_SECONDS
    )
