"""What a slot's holder publishes straight from the change stream, and what it leaves to the
sweep (services/relay/stream_feed.py): pure rules, no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from services.relay.outbox_event import OutboxEvent
from services.relay.selection import find_predecessors
from services.relay.stream_feed import (
    CLOCK_SKEW_SECONDS,
    FRESH_SECONDS,
    MAX_CLOCK_SKEW_SECONDS,
    RECENT_SECONDS,
    PublishedVersions,
    Recent,
    accept_streamed,
)

SLOT = 3
TENURE = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
NOW = TENURE + timedelta(minutes=5)


def inserted(aggregate: str = "order-1", version: int = 1, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "aggregateType": "Order",
        "aggregateId": aggregate,
        "aggregateVersion": version,
        "eventType": "OrderCreated",
        "payload": "{}",
        "status": "Pending",
        "attempts": 0,
        "createdAt": NOW - timedelta(milliseconds=20),
        "slot": SLOT,
    }
    doc.update(overrides)
    return doc


def accept(docs: list[dict[str, Any]], recent: Recent | None = None) -> tuple[list[str], int]:
    events, left = accept_streamed(docs, SLOT, TENURE, NOW, recent or Recent())
    return [str(event.id) for event in events], left


def test_a_fresh_insert_of_the_slot_is_published_from_the_stream() -> None:
    doc = inserted()
    assert accept([doc]) == ([str(doc["_id"])], 0)


def test_another_slots_document_is_ignored_not_left_to_this_slots_sweep() -> None:
    assert accept([inserted(slot=SLOT + 1)]) == ([], 0)


@pytest.mark.parametrize(
    "stale",
    [
        # created before this holder took the slot: an earlier holder may have handled it
        {"createdAt": TENURE - timedelta(milliseconds=1)},
        # replayed from a resume token long after the insert: it may be long published
        {"createdAt": NOW - timedelta(seconds=FRESH_SECONDS + 1)},
        # not what an insert looks like: someone already decided about it
        {"status": "Failed"},
        {"status": "Published"},
        {"attempts": 1},
        {"createdAt": "yesterday"},
    ],
)
def test_a_document_that_may_be_stale_is_left_to_the_sweep(stale: dict[str, Any]) -> None:
    assert accept([inserted(**stale)]) == ([], 1)


@pytest.mark.parametrize(
    ("created", "now"),
    [
        # The order API's clock runs ahead of the relay's: an insert made just before this
        # holder took the slot (an earlier holder may have published or parked it, and a
        # restarted stream replays it) carries a createdAt that reads as inside the tenure.
        (TENURE + timedelta(seconds=CLOCK_SKEW_SECONDS / 2), TENURE + timedelta(seconds=1)),
        # A createdAt ahead of the relay's own clock comes from a clock it cannot compare with.
        (NOW + timedelta(seconds=CLOCK_SKEW_SECONDS + 1), NOW),
    ],
)
def test_a_document_dated_by_a_clock_ahead_of_the_relays_is_left_to_the_sweep(
    created: datetime, now: datetime
) -> None:
    doc = inserted(createdAt=created)
    assert accept_streamed([doc], SLOT, TENURE, now, Recent()) == ([], 1)


def test_the_relay_remembers_what_it_handled_longer_than_any_skewed_fresh_document_lives() -> None:
    # A document this holder handled must still be in Recent whenever the freshness rule
    # could accept it again, with both clocks apart by the tolerated skew.
    assert RECENT_SECONDS >= FRESH_SECONDS + 2 * MAX_CLOCK_SKEW_SECONDS


def test_an_unreadable_document_is_left_to_the_sweep_which_parks_it_with_the_reason() -> None:
    assert accept([inserted(aggregateVersion="v2")]) == ([], 1)


def test_an_event_this_holder_handled_already_is_not_sent_again() -> None:
    doc = inserted()
    recent = Recent()
    recent.add([doc["_id"]])
    assert accept([doc], recent) == ([], 0)
    # and a document delivered twice in one batch goes once
    again = inserted()
    assert accept([again, dict(again)]) == ([str(again["_id"])], 0)


def test_the_handled_set_forgets_only_after_its_keep_time() -> None:
    clock = [100.0]
    recent = Recent(keep=30.0, clock=lambda: clock[0])
    event_id = ObjectId()
    recent.add([event_id])
    clock[0] += 29.0
    assert event_id in recent
    clock[0] += 2.0
    assert event_id not in recent
    assert len(recent) == 0


def _event(aggregate: str, version: int) -> OutboxEvent:
    return OutboxEvent.from_doc(inserted(aggregate, version))


def test_published_versions_remember_the_highest_and_forget_parked_aggregates() -> None:
    versions = PublishedVersions(kept=2)
    versions.record([_event("a", 1), _event("a", 2), _event("b", 1)])
    assert versions.of(["a", "b", "c"]) == {"a": 2, "b": 1}
    versions.forget(["a", None])
    assert versions.of(["a"]) == {}
    versions.record([_event("c", 1), _event("d", 4)])  # over the bound: the oldest goes
    assert versions.of(["b", "c", "d"]) == {"c": 1, "d": 4}


class _NoReads:
    """An outbox that must not be read."""

    def find(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"read the outbox: {args}")


async def test_the_next_version_after_one_this_holder_published_needs_no_read() -> None:
    batch = [_event("a", 3), _event("a", 4), _event("b", 1)]
    extra, failed = await find_predecessors(_NoReads(), batch, [], {"a": 2})  # type: ignore[arg-type]
    assert (extra, failed) == ([], {})


@pytest.mark.parametrize(
    ("batch", "known"),
    [
        ([("a", 4)], {"a": 2}),  # v3 may be unpublished
        ([("a", 2)], {}),  # nothing known of v1
        ([("a", 3), ("a", 5)], {"a": 2}),  # a gap inside the batch
    ],
)
async def test_a_version_that_may_have_an_unpublished_predecessor_is_looked_up(
    batch: list[tuple[str, int]], known: dict[str, int]
) -> None:
    with pytest.raises(AssertionError, match="read the outbox"):
        await find_predecessors(
            _NoReads(),  # type: ignore[arg-type]
            [_event(agg, version) for agg, version in batch],
            [],
            known,
        )
