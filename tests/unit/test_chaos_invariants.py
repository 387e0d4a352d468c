"""The chaos suite's invariant checker and report, on hand-made snapshots (no servers)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from tests.e2e.chaos.invariants import (
    Attempt,
    DlqRow,
    EmailRow,
    Expectations,
    KafkaRow,
    OutboxRow,
    ReservationRow,
    Snapshot,
    evaluate,
)
from tests.e2e.chaos.report import Counts, ScenarioResult, format_line, render_markdown

E1, E2 = "a" * 24, "b" * 24
O1, O2 = "1" * 24, "2" * 24


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


def _complete(**changes: object) -> Snapshot:
    """Two accepted orders, each published once, reserved once, emailed once."""
    snap = Snapshot(
        attempts=[_accepted(0, O1), _accepted(1, O2)],
        orders={"u0": O1, "u1": O2},
        outbox=[OutboxRow(E1, O1, 1, "Published", "u0"), OutboxRow(E2, O2, 1, "Published", "u1")],
        known_events={E1: O1, E2: O2},
        reservations=[ReservationRow(O1, E1, "reserved"), ReservationRow(O2, E2, "reserved")],
        existing_orders={O1, O2},
        emails=[
            EmailRow("1.eml", f"<{E1}.order-created@x>", E1, "u0@example.com"),
            EmailRow("2.eml", f"<{E2}.order-created@x>", E2, "u1@example.com"),
        ],
        published=[KafkaRow(0, 10, O1, E1, 1), KafkaRow(1, 7, O2, E2, 1)],
        dlq=[],
        uncommitted={"inventory-service": 0, "email-service": 0},
    )
    for name, value in changes.items():
        setattr(snap, name, value)
    return snap


def test_a_complete_pipeline_is_settled_without_violations() -> None:
    ev = evaluate(_complete(), Expectations())
    assert ev.settled and not ev.violations
    assert (
        ev.counts.orders_created,
        ev.counts.events_published,
        ev.counts.reservations,
        ev.counts.emails,
    ) == (2, 2, 2, 2)


def test_missing_email_and_uncommitted_records_are_pending_not_violations() -> None:
    snap = _complete(emails=[], uncommitted={"email-service": 2})
    ev = evaluate(snap, Expectations())
    assert not ev.violations
    assert any("without an email" in p for p in ev.pending)
    assert any("uncommitted" in p for p in ev.pending)


def test_relay_duplicates_are_counted_but_allowed() -> None:
    snap = _complete(
        published=[
            KafkaRow(0, 10, O1, E1, 1),
            KafkaRow(0, 11, O1, E1, 1),
            KafkaRow(1, 7, O2, E2, 1),
        ]
    )
    ev = evaluate(snap, Expectations())
    assert ev.counts.relay_duplicates == 1 and not ev.violations


def test_a_second_reservation_is_a_violation() -> None:
    snap = _complete(
        reservations=[
            ReservationRow(O1, E1, "reserved"),
            ReservationRow(O1, E1, "reserved"),
            ReservationRow(O2, E2, "reserved"),
        ]
    )
    ev = evaluate(snap, Expectations())
    assert ev.counts.duplicate_reservations == 1
    assert any("more than one reservation" in v for v in ev.violations)


def test_a_second_email_is_allowed_only_within_the_crash_budget() -> None:
    extra = EmailRow("3.eml", f"<{E1}.order-created@x>", E1, "u0@example.com")
    snap = _complete()
    snap.emails = [*snap.emails, extra]
    assert any("more than one email" in v for v in evaluate(snap, Expectations()).violations)
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
    assert not evaluate(snap, Expectations()).violations
    snap.outbox = [*snap.outbox, OutboxRow("c" * 24, "3" * 24, 1, "Pending", "u2")]
    assert any(
        "failed request left an outbox event" in v
        for v in evaluate(snap, Expectations()).violations
    )


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
    snap.reservations = [ReservationRow(O1, E1, "reserved")]
    assert any("without a reservation" in p for p in evaluate(snap, Expectations()).pending)


def test_an_accepted_order_missing_from_the_database_is_a_lost_order() -> None:
    snap = _complete(orders={"u0": O1})
    assert any("not in MongoDB" in v for v in evaluate(snap, Expectations()).violations)


def test_reservations_and_emails_without_an_order_are_violations() -> None:
    ghost = "9" * 24
    snap = _complete()
    snap.reservations = [*snap.reservations, ReservationRow(ghost, None, "reserved")]
    snap.emails = [*snap.emails, EmailRow("x.eml", f"<{'f' * 24}@x>", "f" * 24, "z@example.com")]
    violations = evaluate(snap, Expectations()).violations
    assert any("reservation for an order that does not exist" in v for v in violations)
    assert any("email for an order that does not exist" in v for v in violations)


def test_versions_of_one_aggregate_published_out_of_order_are_a_violation() -> None:
    snap = _complete(
        outbox=[
            OutboxRow(E1, O1, 1, "Published", "u0"),
            OutboxRow(E2, O2, 1, "Published", "u1"),
            OutboxRow("c" * 24, O1, 2, "Published", "u0"),
        ],
        published=[
            KafkaRow(0, 10, O1, "c" * 24, 2),
            KafkaRow(0, 11, O1, E1, 1),
            KafkaRow(1, 7, O2, E2, 1),
        ],
    )
    assert any("out of order" in v for v in evaluate(snap, Expectations()).violations)


def test_the_dlq_must_hold_exactly_the_injected_records() -> None:
    expect = Expectations(dlq=Counter({("p1", "inventory-service"): 1, ("p1", "email-service"): 1}))
    partial = _complete(dlq=[DlqRow(0, 1, "p1", "inventory-service", "PoisonMessage: not JSON")])
    assert any("not in the DLQ yet" in p for p in evaluate(partial, expect).pending)
    stray = _complete(dlq=[DlqRow(0, 2, O1, "email-service", "SMTPResponseException: 554")])
    assert any("unexpected DLQ record" in v for v in evaluate(stray, expect).violations)


def test_injected_and_replayed_records_are_not_counted_as_relay_duplicates() -> None:
    snap = _complete(
        published=[
            KafkaRow(0, 10, O1, E1, 1),
            KafkaRow(0, 12, O1, E1, 1, injected=True),
            KafkaRow(0, 13, O1, E1, 1, replayed_from="0:4"),
            KafkaRow(1, 7, O2, E2, 1),
        ]
    )
    ev = evaluate(snap, Expectations())
    assert ev.counts.relay_duplicates == 0 and ev.counts.kafka_records == 2


def test_report_has_one_line_and_one_table_row_per_scenario() -> None:
    counts = Counts(orders_created=120, events_published=120, reservations=120, emails=120)
    ok = ScenarioResult("kafka stopped 20 s", counts=counts, settle_seconds=4.2)
    bad = ScenarioResult("email killed", violations=["invariant 5: more than one email: 2"])
    assert format_line(ok).endswith("PASS") and "orders=120" in format_line(ok)
    text = render_markdown([ok, bad], generated_at=datetime(2026, 1, 1, tzinfo=UTC))
    assert "| kafka stopped 20 s | 120 |" in text
    assert "1 of 2 scenarios passed" in text
    assert "- violation: invariant 5" in text


# -- cancellations: convergence (invariant 6) and relay order across topics (invariant 3) --------

C1 = "c" * 24  # the OrderCancelled event of O1
SKU = "CHAOS-A"


def _cancelled_o1(**changes: object) -> Snapshot:
    """O1 created, then cancelled (200): both events published on their topics, the
    reservation released, a confirmation then a cancellation email; O2 untouched."""
    cancelling = _accepted(0, O1)
    cancelling.cancel_sent, cancelling.cancel_status = True, 200
    snap = _complete(
        attempts=[cancelling, _accepted(1, O2)],
        outbox=[
            OutboxRow(E1, O1, 1, "Published", "u0"),
            OutboxRow(E2, O2, 1, "Published", "u1"),
            OutboxRow(C1, O1, 2, "Published", "u0", event_type="OrderCancelled"),
        ],
        known_events={E1: O1, E2: O2, C1: O1},
        reservations=[
            ReservationRow(O1, E1, "cancelled", ((SKU, 2),)),
            ReservationRow(O2, E2, "reserved", ((SKU, 3),)),
        ],
        emails=[
            EmailRow("1.eml", f"<{E1}.order-created@x>", E1, "u0@example.com"),
            EmailRow("2.eml", f"<{E2}.order-created@x>", E2, "u1@example.com"),
            EmailRow("3.eml", f"<{C1}.order-cancelled@x>", C1, "u0@example.com"),
        ],
        published=[
            KafkaRow(0, 10, O1, E1, 1, timestamp=1_000),
            KafkaRow(1, 7, O2, E2, 1, timestamp=1_000),
            KafkaRow(0, 3, O1, C1, 2, topic="order.cancelled", timestamp=1_050),
        ],
        cancelled={O1},
        initial_stock={SKU: 100},
        stock={SKU: 97},
    )
    for name, value in changes.items():
        setattr(snap, name, value)
    return snap


def test_a_converged_history_with_a_cancellation_is_settled_without_violations() -> None:
    ev = evaluate(_cancelled_o1(), Expectations())
    assert ev.settled and not ev.violations, (ev.pending, ev.violations)
    assert ev.counts.orders_cancelled == 1 and ev.counts.events_published == 3


def test_a_cancel_seen_first_by_email_needs_no_confirmation() -> None:
    snap = _cancelled_o1()
    snap.emails = [e for e in snap.emails if e.event_id != E1]
    ev = evaluate(snap, Expectations())
    assert ev.settled and not ev.violations, (ev.pending, ev.violations)


def test_a_cancel_answered_200_must_be_in_mongodb() -> None:
    ev = evaluate(_cancelled_o1(cancelled=set()), Expectations())
    assert any("cancel answered 200 but the order is not cancelled" in v for v in ev.violations)


def test_a_failed_cancel_must_not_have_cancelled_the_order() -> None:
    snap = _cancelled_o1()
    snap.attempts[0].cancel_status = 503
    ev = evaluate(snap, Expectations())
    assert any("cancel failed but the order was cancelled" in v for v in ev.violations)
    assert not evaluate(snap, Expectations(strict_server_errors=False)).violations


def test_a_cancelled_order_needs_exactly_its_one_cancel_event() -> None:
    snap = _cancelled_o1()
    snap.outbox = [r for r in snap.outbox if r.event_id != C1]
    assert any(
        "without its OrderCancelled event" in v for v in evaluate(snap, Expectations()).violations
    )
    stray = _complete(
        outbox=[
            *_complete().outbox,
            OutboxRow(C1, O2, 2, "Published", "u1", event_type="OrderCancelled"),
        ]
    )
    assert any(
        "OrderCancelled event of an order not cancelled" in v
        for v in evaluate(stray, Expectations()).violations
    )


def test_a_reservation_not_yet_released_is_pending_and_a_wrongly_cancelled_one_a_violation() -> (
    None
):
    held = _cancelled_o1(
        reservations=[
            ReservationRow(O1, E1, "reserved", ((SKU, 2),)),
            ReservationRow(O2, E2, "reserved", ((SKU, 3),)),
        ],
        stock={SKU: 95},
    )
    ev = evaluate(held, Expectations())
    assert not ev.violations
    assert any("reservation is not cancelled yet" in p for p in ev.pending)
    wrong = _cancelled_o1(
        reservations=[
            ReservationRow(O1, E1, "cancelled", ((SKU, 2),)),
            ReservationRow(O2, E2, "cancelled", ((SKU, 3),)),
        ],
        stock={SKU: 100},
    )
    assert any(
        "reservation cancelled although its order is not" in v
        for v in evaluate(wrong, Expectations()).violations
    )


def test_stock_must_equal_initial_minus_what_uncancelled_orders_hold() -> None:
    # The released order's 2 units not given back (or given back twice).
    for wrong in (95, 99):
        ev = evaluate(_cancelled_o1(stock={SKU: wrong}), Expectations())
        assert any("stock differs from initial minus reserved" in p for p in ev.pending), wrong


def test_a_cancelled_order_waits_for_its_cancellation_email() -> None:
    snap = _cancelled_o1()
    snap.emails = [e for e in snap.emails if e.event_id != C1]
    ev = evaluate(snap, Expectations())
    assert not ev.violations and any("without an email" in p for p in ev.pending)


def test_a_confirmation_after_the_cancellation_email_is_a_violation() -> None:
    snap = _cancelled_o1()
    snap.emails = [
        EmailRow("1.eml", f"<{C1}.order-cancelled@x>", C1, "u0@example.com"),
        EmailRow("2.eml", f"<{E2}.order-created@x>", E2, "u1@example.com"),
        EmailRow("3.eml", f"<{E1}.order-created@x>", E1, "u0@example.com"),
    ]
    assert any(
        "confirmation received after the order's cancellation email" in v
        for v in evaluate(snap, Expectations()).violations
    )


def test_a_second_cancellation_email_counts_as_a_duplicate() -> None:
    snap = _cancelled_o1()
    snap.emails = [*snap.emails, EmailRow("4.eml", f"<{C1}.order-cancelled@x>", C1, "u0@x")]
    assert any("more than one email" in v for v in evaluate(snap, Expectations()).violations)


def test_a_later_version_sent_before_an_earlier_one_across_topics_is_a_violation() -> None:
    snap = _cancelled_o1()
    snap.published = [
        KafkaRow(0, 10, O1, E1, 1, timestamp=2_000),
        KafkaRow(1, 7, O2, E2, 1, timestamp=1_000),
        KafkaRow(0, 3, O1, C1, 2, topic="order.cancelled", timestamp=1_500),
    ]
    assert any(
        "later version sent before an earlier one" in v
        for v in evaluate(snap, Expectations()).violations
    )


def test_a_cancel_record_not_on_its_topic_yet_is_pending() -> None:
    snap = _cancelled_o1()
    snap.published = [r for r in snap.published if r.topic == "order.created"]
    ev = evaluate(snap, Expectations())
    assert not ev.violations and any("not yet on its topic" in p for p in ev.pending)


def test_versions_going_down_on_one_topic_are_a_violation_for_cancels_too() -> None:
    snap = _cancelled_o1()
    snap.published = [
        *snap.published,
        KafkaRow(0, 4, O1, E1, 1, topic="order.cancelled", timestamp=1_060),
    ]
    violations = evaluate(snap, Expectations()).violations
    assert any("out of order" in v for v in violations)
