"""The chaos suite's invariant checker and report, on hand-made snapshots (no servers).

Each invariant has a test that breaks one fact of a settled snapshot (a mutant of what the
stores would hold if a service misbehaved) and watches the checker report it.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
    INVENTORY_REJECTED_TOPIC,
    INVENTORY_RELEASED_TOPIC,
    INVENTORY_RESERVED_TOPIC,
    ORDER_CANCELLED_TOPIC,
)
from tests.e2e.chaos.invariants import (
    Attempt,
    DlqRow,
    EmailRow,
    Expectations,
    HistoryRow,
    KafkaRow,
    OutboxRow,
    ReservationRow,
    Snapshot,
    evaluate,
)
from tests.e2e.chaos.report import Counts, ScenarioResult, format_line, render_markdown

E1, E2 = "a" * 24, "b" * 24  # the orders' OrderCreated events
V1, V2 = "d" * 24, "e" * 24  # inventory's verdicts on them
O1, O2 = "1" * 24, "2" * 24
SKU, SCARCE = "CHAOS-A", "CHAOS-SCARCE-00"


def _accepted(seq: int, order_id: str) -> Attempt:
    return Attempt(
        seq=seq,
        user_id=f"u{seq}",
        customer_email=f"u{seq}@example.com",
        idempotency_key=f"k{seq}",
        status=201,
        order_id=order_id,
        done=True,
    )


def _mail(name: str, event_id: str, kind: str, to: str) -> EmailRow:
    return EmailRow(name, f"<{event_id}.{kind}@outbox.local>", event_id, to)


def _complete(**changes: object) -> Snapshot:
    """Two accepted orders, each published once, reserved once, confirmed by inventory's
    StockReserved (published too) and emailed its confirmation once."""
    snap = Snapshot(
        attempts=[_accepted(0, O1), _accepted(1, O2)],
        orders={"u0": O1, "u1": O2},
        outbox=[OutboxRow(E1, O1, 1, "Published", "u0"), OutboxRow(E2, O2, 1, "Published", "u1")],
        known_events={E1: O1, E2: O2, V1: O1, V2: O2},
        reservations=[
            ReservationRow(O1, E1, "reserved", ((SKU, 2),)),
            ReservationRow(O2, E2, "reserved", ((SKU, 3),)),
        ],
        existing_orders={O1, O2},
        emails=[
            _mail("1.eml", V1, "order-confirmed", "u0@example.com"),
            _mail("2.eml", V2, "order-confirmed", "u1@example.com"),
        ],
        published=[
            KafkaRow(0, 10, O1, E1, 1),
            KafkaRow(1, 7, O2, E2, 1),
            KafkaRow(0, 4, O1, V1, 1, topic=INVENTORY_RESERVED_TOPIC),
            KafkaRow(1, 2, O2, V2, 1, topic=INVENTORY_RESERVED_TOPIC),
        ],
        dlq=[],
        uncommitted={"inventory-service": 0, "email-service": 0, "order-service": 0},
        statuses={O1: "confirmed", O2: "confirmed"},
        histories={O1: [HistoryRow("confirmed", V1)], O2: [HistoryRow("confirmed", V2)]},
        inventory_outbox=[
            OutboxRow(V1, O1, 1, "Published", None, event_type=EVENT_STOCK_RESERVED),
            OutboxRow(V2, O2, 1, "Published", None, event_type=EVENT_STOCK_RESERVED),
        ],
        initial_stock={SKU: 100, SCARCE: 1},
        stock={SKU: 95, SCARCE: 1},
        short_supply={SCARCE},
    )
    for name, value in changes.items():
        setattr(snap, name, value)
    return snap


def _violations(snap: Snapshot, expect: Expectations | None = None) -> list[str]:
    return evaluate(snap, expect or Expectations()).violations


def test_a_complete_pipeline_is_settled_without_violations() -> None:
    ev = evaluate(_complete(), Expectations())
    assert ev.settled and not ev.violations, (ev.pending, ev.violations)
    assert (
        ev.counts.orders_created,
        ev.counts.orders_confirmed,
        ev.counts.events_published,
        ev.counts.reservations,
        ev.counts.emails,
    ) == (2, 2, 4, 2, 2)


def test_missing_email_and_uncommitted_records_are_pending_not_violations() -> None:
    snap = _complete(emails=[], uncommitted={"email-service": 2})
    ev = evaluate(snap, Expectations())
    assert not ev.violations
    assert any("without an email" in p for p in ev.pending)
    assert any("uncommitted" in p for p in ev.pending)


def test_relay_duplicates_are_counted_but_allowed() -> None:
    snap = _complete()
    snap.published = [*snap.published, KafkaRow(0, 11, O1, E1, 1)]
    ev = evaluate(snap, Expectations())
    assert ev.counts.relay_duplicates == 1 and not ev.violations


def test_a_second_reservation_is_a_violation() -> None:
    snap = _complete()
    snap.reservations = [*snap.reservations, ReservationRow(O1, E1, "reserved")]
    ev = evaluate(snap, Expectations())
    assert ev.counts.duplicate_reservations == 1
    assert any("more than one reservation" in v for v in ev.violations)


def test_a_second_email_is_allowed_only_within_the_crash_budget() -> None:
    snap = _complete()
    snap.emails = [*snap.emails, _mail("3.eml", V1, "order-confirmed", "u0@example.com")]
    assert any("more than one email" in v for v in _violations(snap))
    tolerant = evaluate(snap, Expectations(max_duplicate_emails=1))
    assert not tolerant.violations and tolerant.counts.duplicate_emails == 1


def test_a_failed_request_must_leave_nothing_behind() -> None:
    failed = Attempt(
        seq=2,
        user_id="u2",
        customer_email="u2@example.com",
        idempotency_key="k2",
        status=500,
        error="database_error",
        done=True,
    )
    snap = _complete(attempts=[_accepted(0, O1), _accepted(1, O2), failed])
    assert not _violations(snap)
    snap.outbox = [*snap.outbox, OutboxRow("c" * 24, "3" * 24, 1, "Pending", "u2")]
    assert any("failed request left an outbox event" in v for v in _violations(snap))


def test_an_ambiguous_failure_whose_order_exists_is_checked_like_an_accepted_one() -> None:
    timed_out = Attempt(
        seq=1,
        user_id="u1",
        customer_email="u1@example.com",
        idempotency_key="k1",
        status=None,
        error="ReadTimeout",
        done=True,
    )
    snap = _complete(attempts=[_accepted(0, O1), timed_out])
    ev = evaluate(snap, Expectations())
    assert not ev.violations and ev.counts.orders_created == 2
    snap.reservations = [ReservationRow(O1, E1, "reserved", ((SKU, 2),))]
    assert any("without a reservation" in p for p in evaluate(snap, Expectations()).pending)


def test_an_accepted_order_missing_from_the_database_is_a_lost_order() -> None:
    snap = _complete(orders={"u0": O1})
    assert any("not in MongoDB" in v for v in _violations(snap))


def test_reservations_and_emails_without_an_order_are_violations() -> None:
    ghost = "9" * 24
    snap = _complete()
    snap.reservations = [*snap.reservations, ReservationRow(ghost, None, "reserved")]
    snap.emails = [*snap.emails, EmailRow("x.eml", f"<{'f' * 24}@x>", "f" * 24, "z@example.com")]
    violations = _violations(snap)
    assert any("reservation for an order that does not exist" in v for v in violations)
    assert any("email for an order that does not exist" in v for v in violations)


def test_versions_of_one_aggregate_published_out_of_order_are_a_violation() -> None:
    snap = _complete(
        outbox=[
            OutboxRow(E1, O1, 1, "Published", "u0"),
            OutboxRow(E2, O2, 1, "Published", "u1"),
            OutboxRow("c" * 24, O1, 2, "Published", "u0"),
        ],
    )
    snap.published = [KafkaRow(0, 9, O1, "c" * 24, 2), *snap.published]
    assert any("out of order" in v for v in _violations(snap))


def test_the_dlq_must_hold_exactly_the_injected_records() -> None:
    expect = Expectations(dlq=Counter({("p1", "inventory-service"): 1, ("p1", "email-service"): 1}))
    partial = _complete(dlq=[DlqRow(0, 1, "p1", "inventory-service", "PoisonMessage: not JSON")])
    assert any("not in the DLQ yet" in p for p in evaluate(partial, expect).pending)
    stray = _complete(dlq=[DlqRow(0, 2, O1, "email-service", "SMTPResponseException: 554")])
    assert any("unexpected DLQ record" in v for v in evaluate(stray, expect).violations)


def test_injected_and_replayed_records_are_not_counted_as_relay_duplicates() -> None:
    snap = _complete()
    snap.published = [
        *snap.published,
        KafkaRow(0, 12, O1, E1, 1, injected=True),
        KafkaRow(0, 13, O1, E1, 1, replayed_from="0:4"),
        KafkaRow(0, 5, O1, V1, 1, topic=INVENTORY_RESERVED_TOPIC, replayed_from="2:1"),
    ]
    ev = evaluate(snap, Expectations())
    assert ev.counts.relay_duplicates == 0 and ev.counts.kafka_records == 4


def test_report_has_one_line_and_one_table_row_per_scenario() -> None:
    counts = Counts(
        orders_created=120,
        orders_confirmed=100,
        orders_rejected=20,
        events_published=240,
        reservations=120,
        emails=120,
    )
    ok = ScenarioResult("kafka stopped 20 s", counts=counts, settle_seconds=4.2)
    bad = ScenarioResult("email killed", violations=["invariant 5: more than one email: 2"])
    line = format_line(ok)
    assert line.endswith("PASS") and "orders=120" in line and "rejected=20" in line
    text = render_markdown([ok, bad], generated_at=datetime(2026, 1, 1, tzinfo=UTC))
    assert "| kafka stopped 20 s | 120 | 100 | 20 | 0 |" in text
    assert "1 of 2 scenarios passed" in text
    assert "- violation: invariant 5" in text


# -- cancellations: convergence (invariant 6) and relay order across topics (invariant 3) --------

C1 = "c" * 24  # the OrderCancelled event of O1
R1 = "7" * 24  # inventory's StockReleased of O1


def _cancelled_o1(**changes: object) -> Snapshot:
    """O1 created, confirmed, then cancelled (200): its events published on their topics, the
    reservation released and StockReleased announced, a confirmation then a cancellation
    email; O2 confirmed and untouched."""
    cancelling = _accepted(0, O1)
    cancelling.cancel_sent, cancelling.cancel_status = True, 200
    snap = _complete(
        attempts=[cancelling, _accepted(1, O2)],
        outbox=[
            OutboxRow(E1, O1, 1, "Published", "u0"),
            OutboxRow(E2, O2, 1, "Published", "u1"),
            OutboxRow(C1, O1, 2, "Published", "u0", event_type=EVENT_ORDER_CANCELLED),
        ],
        known_events={E1: O1, E2: O2, C1: O1, V1: O1, V2: O2, R1: O1},
        reservations=[
            ReservationRow(O1, E1, "cancelled", ((SKU, 2),)),
            ReservationRow(O2, E2, "reserved", ((SKU, 3),)),
        ],
        emails=[
            _mail("1.eml", V1, "order-confirmed", "u0@example.com"),
            _mail("2.eml", V2, "order-confirmed", "u1@example.com"),
            _mail("3.eml", C1, "order-cancelled", "u0@example.com"),
        ],
        published=[
            KafkaRow(0, 10, O1, E1, 1, timestamp=1_000),
            KafkaRow(1, 7, O2, E2, 1, timestamp=1_000),
            KafkaRow(0, 3, O1, C1, 2, topic=ORDER_CANCELLED_TOPIC, timestamp=1_050),
            KafkaRow(0, 4, O1, V1, 1, topic=INVENTORY_RESERVED_TOPIC, timestamp=1_010),
            KafkaRow(1, 2, O2, V2, 1, topic=INVENTORY_RESERVED_TOPIC, timestamp=1_010),
            KafkaRow(0, 1, O1, R1, 2, topic=INVENTORY_RELEASED_TOPIC, timestamp=1_060),
        ],
        statuses={O1: "cancelled", O2: "confirmed"},
        histories={
            O1: [HistoryRow("confirmed", V1), HistoryRow("cancelled", None, "POST cancel")],
            O2: [HistoryRow("confirmed", V2)],
        },
        inventory_outbox=[
            OutboxRow(V1, O1, 1, "Published", None, event_type=EVENT_STOCK_RESERVED),
            OutboxRow(V2, O2, 1, "Published", None, event_type=EVENT_STOCK_RESERVED),
            OutboxRow(R1, O1, 2, "Published", None, event_type=EVENT_STOCK_RELEASED),
        ],
        stock={SKU: 97, SCARCE: 1},
    )
    for name, value in changes.items():
        setattr(snap, name, value)
    return snap


def test_a_converged_history_with_a_cancellation_is_settled_without_violations() -> None:
    ev = evaluate(_cancelled_o1(), Expectations())
    assert ev.settled and not ev.violations, (ev.pending, ev.violations)
    assert ev.counts.orders_cancelled == 1 and ev.counts.events_published == 6


def test_a_cancel_seen_first_by_email_needs_no_confirmation() -> None:
    snap = _cancelled_o1()
    snap.emails = [e for e in snap.emails if e.event_id != V1]
    ev = evaluate(snap, Expectations())
    assert ev.settled and not ev.violations, (ev.pending, ev.violations)


def test_a_cancel_answered_200_must_be_in_mongodb() -> None:
    snap = _cancelled_o1()
    snap.statuses = {O1: "confirmed", O2: "confirmed"}
    assert any("cancel answered 200 but the order is not cancelled" in v for v in _violations(snap))


def test_a_failed_cancel_must_not_have_cancelled_the_order() -> None:
    snap = _cancelled_o1()
    snap.attempts[0].cancel_status = 503
    assert any("cancel failed but the order was cancelled" in v for v in _violations(snap))
    assert not _violations(snap, Expectations(strict_server_errors=False))


def test_a_cancelled_order_needs_exactly_its_one_cancel_event() -> None:
    snap = _cancelled_o1()
    snap.outbox = [r for r in snap.outbox if r.event_id != C1]
    assert any("without its OrderCancelled event" in v for v in _violations(snap))
    stray = _complete()
    stray.outbox = [
        *stray.outbox,
        OutboxRow(C1, O2, 2, "Published", "u1", event_type=EVENT_ORDER_CANCELLED),
    ]
    assert any("OrderCancelled event of an order not cancelled" in v for v in _violations(stray))


def test_a_reservation_not_yet_released_is_pending_and_a_wrongly_cancelled_one_a_violation() -> (
    None
):
    held = _cancelled_o1(
        reservations=[
            ReservationRow(O1, E1, "reserved", ((SKU, 2),)),
            ReservationRow(O2, E2, "reserved", ((SKU, 3),)),
        ],
        stock={SKU: 95, SCARCE: 1},
    )
    ev = evaluate(held, Expectations())
    assert not ev.violations
    assert any("reservation is not cancelled yet" in p for p in ev.pending)
    wrong = _cancelled_o1(
        reservations=[
            ReservationRow(O1, E1, "cancelled", ((SKU, 2),)),
            ReservationRow(O2, E2, "cancelled", ((SKU, 3),)),
        ],
        stock={SKU: 100, SCARCE: 1},
    )
    assert any("reservation cancelled although its order is not" in v for v in _violations(wrong))


def test_stock_must_equal_initial_minus_what_uncancelled_orders_hold() -> None:
    # The released order's 2 units not given back (or given back twice).
    for wrong in (95, 99):
        ev = evaluate(_cancelled_o1(stock={SKU: wrong, SCARCE: 1}), Expectations())
        assert any("stock differs from initial minus reserved" in p for p in ev.pending), wrong


def test_a_cancelled_order_waits_for_its_cancellation_email() -> None:
    snap = _cancelled_o1()
    snap.emails = [e for e in snap.emails if e.event_id != C1]
    ev = evaluate(snap, Expectations())
    assert not ev.violations and any("without an email" in p for p in ev.pending)


def test_a_confirmation_after_the_cancellation_email_is_a_violation() -> None:
    snap = _cancelled_o1()
    snap.emails = [
        _mail("1.eml", C1, "order-cancelled", "u0@example.com"),
        _mail("2.eml", V2, "order-confirmed", "u1@example.com"),
        _mail("3.eml", V1, "order-confirmed", "u0@example.com"),
    ]
    assert any(
        "verdict mail received after the order's cancellation notice" in v
        for v in _violations(snap)
    )


def test_a_second_cancellation_email_counts_as_a_duplicate() -> None:
    snap = _cancelled_o1()
    snap.emails = [*snap.emails, _mail("4.eml", C1, "order-cancelled", "u0@example.com")]
    assert any("more than one email" in v for v in _violations(snap))


def test_a_later_version_sent_before_an_earlier_one_across_topics_is_a_violation() -> None:
    snap = _cancelled_o1()
    snap.published = [
        KafkaRow(0, 10, O1, E1, 1, timestamp=2_000) if r.event_id == E1 else r
        for r in snap.published
    ]
    assert any("later version sent before an earlier one" in v for v in _violations(snap))


def test_a_cancel_record_not_on_its_topic_yet_is_pending() -> None:
    snap = _cancelled_o1()
    snap.published = [r for r in snap.published if r.topic != ORDER_CANCELLED_TOPIC]
    ev = evaluate(snap, Expectations())
    assert not ev.violations and any("not yet on its topic" in p for p in ev.pending)


def test_versions_going_down_on_one_topic_are_a_violation_for_cancels_too() -> None:
    snap = _cancelled_o1()
    snap.published = [
        *snap.published,
        KafkaRow(0, 4, O1, E1, 1, topic=ORDER_CANCELLED_TOPIC, timestamp=1_060),
    ]
    assert any("out of order" in v for v in _violations(snap))


# -- invariant 7: every order ends in exactly one terminal state ----------------------------------


def test_an_order_still_placed_is_pending_not_settled() -> None:
    snap = _complete(emails=[_mail("2.eml", V2, "order-confirmed", "u1@example.com")])
    snap.statuses = {O1: "placed", O2: "confirmed"}
    snap.histories = {O2: [HistoryRow("confirmed", V2)]}
    ev = evaluate(snap, Expectations())
    assert not ev.violations, ev.violations
    assert any("not in a terminal state yet" in p and O1 in p for p in ev.pending)


def test_an_order_in_a_state_the_api_does_not_define_is_a_violation() -> None:
    snap = _complete()
    snap.statuses = {O1: "created", O2: "confirmed"}
    assert any("state the API does not define" in v for v in _violations(snap))


def test_a_history_with_two_verdicts_is_off_the_state_machine() -> None:
    # Confirmed, then a late StockRejected moved it on: two terminal states in one life.
    snap = _complete()
    snap.statuses = {O1: "rejected", O2: "confirmed"}
    snap.histories = {
        O1: [HistoryRow("confirmed", V1), HistoryRow("rejected", "6" * 24)],
        O2: [HistoryRow("confirmed", V2)],
    }
    assert any("history steps off the state machine" in v for v in _violations(snap))


def test_a_cancelled_order_that_moves_again_is_off_the_state_machine() -> None:
    snap = _cancelled_o1()
    snap.statuses = {O1: "confirmed", O2: "confirmed"}
    snap.histories = {
        O1: [*snap.histories[O1], HistoryRow("confirmed", V1)],
        O2: [HistoryRow("confirmed", V2)],
    }
    assert any("history steps off the state machine" in v for v in _violations(snap))


def test_a_late_verdict_recorded_without_a_move_stays_on_the_state_machine() -> None:
    snap = _cancelled_o1()
    late = HistoryRow("cancelled", V1, "StockReserved")
    snap.histories = {
        O1: [HistoryRow("cancelled", None, "POST cancel"), late],
        O2: [HistoryRow("confirmed", V2)],
    }
    ev = evaluate(snap, Expectations())
    assert ev.settled and not ev.violations, (ev.pending, ev.violations)


def test_a_history_that_does_not_end_in_the_orders_status_is_a_violation() -> None:
    snap = _complete()
    snap.histories = {O1: [], O2: [HistoryRow("confirmed", V2)]}
    assert any("history does not end in the order's status" in v for v in _violations(snap))


def test_a_verdict_applied_twice_is_a_violation() -> None:
    # A redelivery after a crash mid-transition must not write a second step.
    snap = _complete()
    snap.histories = {
        O1: [HistoryRow("confirmed", V1), HistoryRow("confirmed", V1)],
        O2: [HistoryRow("confirmed", V2)],
    }
    assert any("an event applied to an order twice" in v for v in _violations(snap))


def test_a_confirmation_step_must_name_inventorys_verdict() -> None:
    snap = _complete()
    snap.histories = {O1: [HistoryRow("confirmed", "6" * 24)], O2: [HistoryRow("confirmed", V2)]}
    assert any("names no verdict inventory announced" in v for v in _violations(snap))


# -- invariant 8: the order, inventory and the emails agree ---------------------------------------


def _rejected_o2(**changes: object) -> Snapshot:
    """O2 asked for a SKU in short supply: inventory rejected it (StockRejected, published),
    took nothing, the order followed, the customer got one rejection notice; O1 confirmed."""
    snap = _complete(
        reservations=[
            ReservationRow(O1, E1, "reserved", ((SKU, 2),)),
            ReservationRow(O2, E2, "rejected", ((SKU, 3), (SCARCE, 2))),
        ],
        emails=[
            _mail("1.eml", V1, "order-confirmed", "u0@example.com"),
            _mail("2.eml", V2, "order-rejected", "u1@example.com"),
        ],
        published=[
            KafkaRow(0, 10, O1, E1, 1),
            KafkaRow(1, 7, O2, E2, 1),
            KafkaRow(0, 4, O1, V1, 1, topic=INVENTORY_RESERVED_TOPIC),
            KafkaRow(1, 2, O2, V2, 1, topic=INVENTORY_REJECTED_TOPIC),
        ],
        statuses={O1: "confirmed", O2: "rejected"},
        histories={O1: [HistoryRow("confirmed", V1)], O2: [HistoryRow("rejected", V2)]},
        inventory_outbox=[
            OutboxRow(V1, O1, 1, "Published", None, event_type=EVENT_STOCK_RESERVED),
            OutboxRow(V2, O2, 1, "Published", None, event_type=EVENT_STOCK_REJECTED),
        ],
        stock={SKU: 98, SCARCE: 1},
    )
    for name, value in changes.items():
        setattr(snap, name, value)
    return snap


def test_a_rejected_order_is_settled_without_violations() -> None:
    ev = evaluate(_rejected_o2(), Expectations())
    assert ev.settled and not ev.violations, (ev.pending, ev.violations)
    assert (ev.counts.orders_confirmed, ev.counts.orders_rejected) == (1, 1)


def test_a_rejected_order_waits_for_its_rejection_notice() -> None:
    snap = _rejected_o2()
    snap.emails = snap.emails[:1]
    ev = evaluate(snap, Expectations())
    assert not ev.violations and any("rejection notice" in p for p in ev.pending)


def test_a_confirmation_for_an_order_inventory_rejected_is_a_violation() -> None:
    # The bug the loop fixes: email confirms from OrderCreated whatever inventory decided.
    snap = _rejected_o2()
    snap.emails = [*snap.emails, _mail("3.eml", E2, "order-created", "u1@example.com")]
    assert any("email for an event that calls for none" in v for v in _violations(snap))
    # And a confirmation from a StockReserved for an order the order service holds rejected.
    told = _rejected_o2()
    told.inventory_outbox = [
        told.inventory_outbox[0],
        OutboxRow(V2, O2, 1, "Published", None, event_type=EVENT_STOCK_RESERVED),
    ]
    told.emails = [told.emails[0], _mail("2.eml", V2, "order-confirmed", "u1@example.com")]
    assert any("told confirmed, order rejected" in v for v in _violations(told))


def test_a_rejection_notice_for_a_confirmed_order_is_a_violation() -> None:
    snap = _rejected_o2()
    snap.statuses = {O1: "confirmed", O2: "confirmed"}
    snap.histories = {O1: [HistoryRow("confirmed", V1)], O2: [HistoryRow("confirmed", V2)]}
    violations = _violations(snap)
    assert any("told rejected, order confirmed" in v for v in violations)
    assert any("order's state and its reservation disagree" in v for v in violations)


def test_a_rejection_of_an_order_whose_skus_are_all_ample_is_a_violation() -> None:
    snap = _rejected_o2()
    snap.reservations = [snap.reservations[0], ReservationRow(O2, E2, "rejected", ((SKU, 3),))]
    assert any("every SKU it asked for is ample" in v for v in _violations(snap))


def test_a_confirmed_order_whose_stock_was_not_taken_is_a_violation() -> None:
    snap = _complete()
    snap.reservations = [snap.reservations[0], ReservationRow(O2, E2, "rejected", ((SCARCE, 1),))]
    assert any("order's state and its reservation disagree" in v for v in _violations(snap))


def test_a_reservation_inventory_did_not_announce_is_pending() -> None:
    # Reserved, but its StockReserved missing from inventory's outbox (read skew, or lost).
    snap = _complete()
    snap.inventory_outbox = snap.inventory_outbox[:1]
    ev = evaluate(snap, Expectations())
    assert any("reservation and inventory's outbox disagree" in p for p in ev.pending)
    # Cancelled after a reservation, but no StockReleased: the stock's return not announced.
    quiet = _cancelled_o1()
    quiet.inventory_outbox = quiet.inventory_outbox[:2]
    ev = evaluate(quiet, Expectations())
    assert any("reservation and inventory's outbox disagree" in p for p in ev.pending)


def test_two_verdicts_for_one_order_are_a_violation() -> None:
    snap = _complete()
    snap.inventory_outbox = [
        *snap.inventory_outbox,
        OutboxRow("6" * 24, O1, 2, "Published", None, event_type=EVENT_STOCK_REJECTED),
    ]
    assert any("inventory announced two verdicts" in v for v in _violations(snap))


def test_a_rejection_notice_then_the_cancellation_is_a_converged_history() -> None:
    # Cancelled while placed, the rejection already on its way: inventory took nothing, the
    # customer heard the rejection, then the cancellation.
    snap = _rejected_o2()
    cancelling = _accepted(1, O2)
    cancelling.cancel_sent, cancelling.cancel_status = True, 200
    c2 = "c" * 24
    snap.attempts = [snap.attempts[0], cancelling]
    snap.outbox = [
        *snap.outbox,
        OutboxRow(c2, O2, 2, "Published", "u1", event_type=EVENT_ORDER_CANCELLED),
    ]
    snap.published = [
        *snap.published,
        KafkaRow(1, 3, O2, c2, 2, topic=ORDER_CANCELLED_TOPIC),
    ]
    snap.reservations = [snap.reservations[0], ReservationRow(O2, E2, "cancelled", ((SCARCE, 2),))]
    snap.emails = [*snap.emails, _mail("3.eml", c2, "order-cancelled", "u1@example.com")]
    snap.statuses = {O1: "confirmed", O2: "cancelled"}
    snap.histories = {
        O1: [HistoryRow("confirmed", V1)],
        O2: [HistoryRow("cancelled", None, "POST cancel"), HistoryRow("cancelled", V2)],
    }
    ev = evaluate(snap, Expectations())
    assert ev.settled and not ev.violations, (ev.pending, ev.violations)
    # The rejection notice after the cancellation notice would contradict the last word.
    snap.emails = [snap.emails[0], snap.emails[2], _mail("4.eml", V2, "order-rejected", "u1@x")]
    assert any("after the order's cancellation notice" in v for v in _violations(snap))


def test_a_cancel_refused_with_409_leaves_the_order_rejected() -> None:
    refused = _accepted(1, O2)
    refused.cancel_sent, refused.cancel_status = True, 409
    assert not _violations(_rejected_o2(attempts=[_accepted(0, O1), refused]))
    confirmed = _complete(attempts=[_accepted(0, O1), refused])
    assert any(
        "cancel refused (409) but the order is not rejected" in v for v in _violations(confirmed)
    )


# -- invariant 4 on inventory's outbox: no inventory event lost ----------------------------------


def test_an_inventory_event_not_published_is_pending_and_a_failed_one_a_violation() -> None:
    snap = _complete()
    snap.inventory_outbox = [
        OutboxRow(V1, O1, 1, "Pending", None, attempts=2, event_type=EVENT_STOCK_RESERVED),
        snap.inventory_outbox[1],
    ]
    ev = evaluate(snap, Expectations())
    assert not ev.violations and any(
        "inventory outbox events not yet Published" in p for p in ev.pending
    )
    snap.inventory_outbox = [
        OutboxRow(
            V1, O1, 1, "Failed", None, last_error="too large", event_type=EVENT_STOCK_RESERVED
        ),
        snap.inventory_outbox[1],
    ]
    assert any("inventory outbox event Failed" in v for v in _violations(snap))


def test_an_inventory_event_marked_published_but_not_on_its_topic_is_pending() -> None:
    snap = _complete()
    snap.published = [r for r in snap.published if r.event_id != V1]
    ev = evaluate(snap, Expectations())
    assert not ev.violations
    assert any("not yet on its topic" in p and INVENTORY_RESERVED_TOPIC in p for p in ev.pending)


def test_a_release_sent_before_its_reservation_is_a_violation() -> None:
    snap = _cancelled_o1()
    snap.published = [
        KafkaRow(0, 4, O1, V1, 1, topic=INVENTORY_RESERVED_TOPIC, timestamp=1_100)
        if r.event_id == V1
        else r
        for r in snap.published
    ]
    assert any("later version sent before an earlier one" in v for v in _violations(snap))


def test_an_inventory_record_that_is_not_its_outbox_event_is_a_violation() -> None:
    snap = _complete()
    snap.published = [
        *snap.published,
        KafkaRow(0, 5, O1, "6" * 24, 1, topic=INVENTORY_RESERVED_TOPIC),
    ]
    assert any("record headers do not match the outbox event" in v for v in _violations(snap))
