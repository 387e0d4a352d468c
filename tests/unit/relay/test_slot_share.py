"""The fair share of slots among live relays (services/relay/share.py): pure decisions."""

from __future__ import annotations

import pytest

from services.relay.share import (
    dissenters,
    fair_share,
    prevailing_slot_count,
    to_acquire,
    to_release,
)


@pytest.mark.parametrize("live", [1, 2, 3, 4, 5, 7, 16, 17, 40])
@pytest.mark.parametrize("slots", [1, 16, 64])
def test_the_shares_add_up_to_every_slot_and_differ_by_at_most_one(live: int, slots: int) -> None:
    held = {f"relay-{i}": (i * 7) % 5 for i in range(live)}
    shares = [fair_share(held, me, slots) for me in held]
    assert sum(shares) == slots
    assert max(shares) - min(shares) <= 1
    assert set(shares) <= {slots // live, -(-slots // live)}


def test_the_relay_holding_more_keeps_the_larger_share() -> None:
    # 16 slots among 3: 6/5/5. The relay that holds 6 keeps 6 whatever its name.
    held = {"a": 5, "b": 5, "z": 6}
    assert [fair_share(held, me, 16) for me in ("a", "b", "z")] == [5, 5, 6]


def test_a_relay_resumed_after_its_slots_moved_does_not_take_them_back() -> None:
    # One slot, two relays: the holder keeps it; the one that lost it (holds 0) gets nothing.
    held = {"relay-a": 0, "relay-b": 1}
    assert fair_share(held, "relay-a", 1) == 0
    assert fair_share(held, "relay-b", 1) == 1


def test_a_newcomer_counts_itself_before_its_first_heartbeat_is_read() -> None:
    held = {"a": 8, "b": 8}
    assert fair_share(held, "c", 16) == 5
    assert sum(fair_share({**held, "c": 0}, me, 16) for me in ("a", "b", "c")) == 16


def test_ties_are_broken_by_instance_id_the_same_way_everywhere() -> None:
    held = {"b": 4, "a": 4, "c": 4, "d": 4}
    assert [fair_share(held, me, 18) for me in "abcd"] == [5, 5, 4, 4]


def test_a_relay_above_its_share_releases_its_highest_slots() -> None:
    assert to_release({0, 3, 7, 9, 12}, 3) == [12, 9]
    assert to_release({0, 3}, 3) == []


def test_a_relay_below_its_share_takes_the_lowest_free_slots() -> None:
    assert to_acquire([9, 2, 5, 11], held_count=4, share=6) == [2, 5]
    assert to_acquire([1], held_count=6, share=6) == []


def test_the_slot_count_most_held_slots_are_under_prevails_over_a_newcomer() -> None:
    # Two relays publish 8 slots each under 16; a third starts with 32 and holds nothing.
    members = {"a": (16, 8), "b": (16, 8), "x": (32, 0)}
    assert prevailing_slot_count(members) == 16
    assert dissenters(members) == {"x": 32}
    # Even several newcomers do not overrule the relays that hold the slots.
    assert dissenters({"a": (16, 16), "x": (32, 0), "y": (32, 0)}) == {"x": 32, "y": 32}


def test_without_held_slots_the_value_of_more_relays_then_the_smaller_prevails() -> None:
    assert dissenters({"a": (16, 0), "x": (32, 0), "y": (32, 0)}) == {"a": 16}
    # A tie is broken the same way on every relay, so the two sides never both act.
    assert dissenters({"a": (16, 0), "x": (32, 0)}) == {"x": 32}
    assert dissenters({"x": (32, 0), "a": (16, 0)}) == {"x": 32}


def test_relays_that_agree_have_no_dissenter() -> None:
    assert dissenters({"a": (16, 5), "b": (16, 6), "c": (16, 5)}) == {}
    assert dissenters({"alone": (32, 0)}) == {}


def test_a_dissenter_left_out_of_the_share_leaves_the_others_every_slot() -> None:
    # What the relays that agree compute once the dissenter is left out: nothing to release,
    # and between them their shares still cover every slot.
    members = {"a": (16, 8), "b": (16, 8), "x": (32, 0)}
    held = {m: count for m, (_, count) in members.items() if m not in dissenters(members)}
    assert [fair_share(held, me, 16) for me in ("a", "b")] == [8, 8]
    assert to_release(set(range(8)), fair_share(held, "a", 16)) == []
