"""The overview's slot owners: slots held per relay, an expired lease counting as no owner."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.console.views import SlotOwner, owner_summary


def test_slots_are_counted_per_holder_and_an_expired_lease_is_no_owner() -> None:
    later = datetime.now(UTC) + timedelta(seconds=10)
    earlier = datetime.now(UTC) - timedelta(seconds=10)
    owners = [
        SlotOwner(0, "relay-b", 3, later, 0),
        SlotOwner(1, "relay-a", 1, later, 2),
        SlotOwner(2, "relay-a", 1, later, 0),
        SlotOwner(3, "relay-c", 7, earlier, 5),  # its holder died: nobody publishes slot 3
        SlotOwner(4, None, None, None, 1),  # never taken
    ]
    assert owner_summary(owners) == {"relay-a": 2, "relay-b": 1}
    assert [o.slot for o in owners if not o.held] == [3, 4]
