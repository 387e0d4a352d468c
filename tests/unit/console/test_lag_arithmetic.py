"""Lag is what a consumer still has to read (shared/lag.py), not end minus committed."""

from __future__ import annotations

from shared.lag import GroupLag, lag_of


def test_a_caught_up_group_behind_a_transaction_marker_has_no_lag() -> None:
    # Record at 4, the transaction's commit marker at 5; the group committed 5 (offset + 1),
    # the read_committed end is 6; reading [5, 6) returns no record.
    assert lag_of(5, 6, []) == 0


def test_records_still_to_read_are_counted_and_markers_are_not() -> None:
    # Records at 5, 6, 8; markers at 7 and 9; end 10.
    assert lag_of(5, 10, [5, 6, 8]) == 3
    # A range read from an earlier start (another group's) counts only from this start.
    assert lag_of(7, 10, [5, 6, 8]) == 1


def test_a_gap_not_read_counts_whole() -> None:
    assert lag_of(0, 5_000, None) == 5_000


def test_nothing_to_read_at_or_past_the_end() -> None:
    assert lag_of(6, 6, None) == 0
    assert lag_of(7, 6, None) == 0


def test_a_groups_total_is_the_sum_over_its_partitions() -> None:
    assert GroupLag("g", "t", {0: 2, 1: 0, 2: 3}).total == 5
