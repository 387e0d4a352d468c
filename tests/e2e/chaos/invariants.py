"""The invariants of the failure-injection suite, as pure functions over a snapshot.

The harness collects a :class:`Snapshot` (what the load generator was told, and what MongoDB,
Kafka, the DLQ and the SMTP sink hold) and :func:`evaluate` turns it into two lists:

* ``pending``: conditions that may still resolve (an event not yet published, an email not yet
  received, a consumer group with uncommitted records). The harness polls until this is empty;
  whatever is left at the deadline becomes a violation.
* ``violations``: conditions that no amount of waiting fixes (a second reservation, an email for
  an order that does not exist, a failed request that left an order behind, events of one
  aggregate published out of order, an unexpected DLQ record).

Orders may be cancelled (``POST /orders/{id}/cancel``): a cancelled order has a second event,
``OrderCancelled`` v2 on ``order.cancelled``, and the convergence invariant (6) says where both
consumers must end whatever order the two topics delivered the events in.

No I/O here, so the rules are unit-tested with hand-made snapshots.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    ORDER_CREATED_TOPIC,
    OutboxStatus,
    topic_for_event_type,
)
from tests.e2e.chaos.report import Counts

# Shown per violation; a scenario with 300 broken orders does not need 300 lines to say so.
MAX_EXAMPLES = 5


@dataclass
class Attempt:
    """One ``POST /orders`` the load generator made, and what it was told."""

    seq: int
    user_id: str
    customer_email: str
    idempotency_key: str
    status: int | None = None  # None: no HTTP answer (timeout, connection refused or reset)
    order_id: str | None = None
    error: str | None = None
    elapsed: float = 0.0
    done: bool = False
    # The ``POST /orders/{id}/cancel`` the load generator sent for this order, if any.
    cancel_sent: bool = False
    cancel_status: int | None = None  # None: no answer (or not sent)
    cancel_error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.order_id is not None

    @property
    def server_error(self) -> bool:
        return self.status is not None and self.status >= 500

    @property
    def cancel_accepted(self) -> bool:
        return self.cancel_status == 200

    @property
    def cancel_server_error(self) -> bool:
        return self.cancel_status is not None and self.cancel_status >= 500


@dataclass(frozen=True)
class OutboxRow:
    event_id: str
    aggregate_id: str
    aggregate_version: int
    status: str
    user_id: str | None
    attempts: int = 0
    last_error: str | None = None
    event_type: str = EVENT_ORDER_CREATED


@dataclass(frozen=True)
class ReservationRow:
    order_id: str
    event_id: str | None
    status: str
    # (sku, quantity) of every line the reservation holds (none for an early-cancel record).
    items: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class EmailRow:
    name: str
    message_id: str
    event_id: str | None  # parsed from the Message-ID
    recipient: str


@dataclass(frozen=True)
class KafkaRow:
    partition: int
    offset: int
    key: str | None
    event_id: str | None  # the idempotencyKey header
    aggregate_version: int | None
    replayed_from: str | None = None
    injected: bool = False  # produced by the scenario itself, not by the relay
    topic: str = ORDER_CREATED_TOPIC
    timestamp: int | None = None  # the record's CreateTime (ms): when the relay sent it


@dataclass(frozen=True)
class DlqRow:
    partition: int
    offset: int
    key: str | None
    group: str
    reason: str


@dataclass
class Snapshot:
    attempts: list[Attempt]
    orders: dict[str, str]  # userId -> order id, for the users of this scenario
    outbox: list[OutboxRow]  # events created during the scenario
    known_events: dict[str, str]  # event id -> aggregate id, for every event an email names
    reservations: list[ReservationRow]  # every reservation in the pipeline's database
    existing_orders: set[str]  # which of the reservations' order ids exist as orders
    emails: list[EmailRow]  # received since the scenario began
    published: list[KafkaRow]  # order.created and order.cancelled records since the start
    dlq: list[DlqRow]  # records of both DLQ topics since the scenario began
    uncommitted: dict[str, int]  # consumer group -> records since the start not yet committed
    cancelled: set[str] = field(default_factory=set)  # order ids whose status is cancelled
    # Stock of the SKUs the suite seeded: what it was seeded with, what it is now. Empty: the
    # stock convergence check is skipped.
    initial_stock: dict[str, int] = field(default_factory=dict)
    stock: dict[str, int] = field(default_factory=dict)


@dataclass
class Expectations:
    """What a scenario injected on purpose, and which effects it tolerates."""

    # (Kafka key, consumer group) -> DLQ records expected (at least one each).
    dlq: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Keys of records the scenario produced straight into order.created (poison, copies).
    injected_keys: set[str] = field(default_factory=set)
    # Extra emails tolerated: one per record the email consumer had inside its documented window
    # (after the SMTP 250, before the ``done`` marker) when the scenario crashed it. Zero
    # everywhere else.
    max_duplicate_emails: int = 0
    # A request answered with 5xx must have written nothing. Off only where the outcome is
    # genuinely unknowable (the database stopped during the commit): such an order must then be
    # complete, like any accepted order.
    strict_server_errors: bool = True
    # Orders the scenario created outside the load generator (e.g. the poison scenario's victim).
    extra_orders: set[str] = field(default_factory=set)


@dataclass
class Evaluation:
    pending: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)

    @property
    def settled(self) -> bool:
        return not self.pending


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_EXAMPLES])
    more = len(items) - MAX_EXAMPLES
    return shown + (f" (+{more} more)" if more > 0 else "")


def _add(target: list[str], what: str, items: list[str]) -> None:
    if items:
        target.append(f"{what}: {len(items)} [{_examples(items)}]")


def evaluate(snap: Snapshot, expect: Expectations) -> Evaluation:
    """Check the invariants on ``snap``; see the module docstring for pending vs violation."""
    ev = Evaluation()
    live, failed = _live_orders(snap, expect, ev)
    cancelled = _cancelled_orders(snap, live, expect, ev)
    events = _outbox_events(snap, live, cancelled, failed, ev)
    _relay_records(snap, live, events, ev)
    _reservations(snap, live, cancelled, ev)
    _stock(snap, ev)
    _emails(snap, live, cancelled, events, failed, expect, ev)
    _dead_letters(snap, expect, ev)
    # -- consumers caught up: nothing left that could still add an effect ----------------------
    behind = [f"{g}: {n}" for g, n in sorted(snap.uncommitted.items()) if n > 0]
    _add(ev.pending, "consumer groups with uncommitted records", behind)
    return ev


def _live_orders(
    snap: Snapshot, expect: Expectations, ev: Evaluation
) -> tuple[dict[str, Attempt | None], list[Attempt]]:
    """Which orders exist: accepted ones, plus failed requests whose order exists anyway."""
    live: dict[str, Attempt | None] = {}
    lost: list[str] = []
    wrong_id: list[str] = []
    server_error_with_order: list[str] = []
    unanswered_with_order: list[str] = []
    failed: list[Attempt] = []
    for a in snap.attempts:
        stored = snap.orders.get(a.user_id)
        if a.accepted:
            assert a.order_id is not None
            if stored is None:
                lost.append(f"{a.user_id} (id {a.order_id})")
            elif stored != a.order_id:
                wrong_id.append(f"{a.user_id}: answered {a.order_id}, stored {stored}")
            live[a.order_id] = a
        elif stored is not None:
            if a.server_error and expect.strict_server_errors:
                server_error_with_order.append(f"{a.user_id} (HTTP {a.status}, order {stored})")
            elif a.status is None or a.server_error:
                unanswered_with_order.append(f"{a.user_id} (order {stored})")
            else:
                server_error_with_order.append(f"{a.user_id} (HTTP {a.status}, order {stored})")
            live[stored] = a
        else:
            failed.append(a)
    for order_id in expect.extra_orders:
        live.setdefault(order_id, None)
    _add(ev.violations, "invariant 1: order answered 2xx but not in MongoDB", lost)
    _add(ev.violations, "invariant 1: order id in the answer differs from the stored one", wrong_id)
    _add(
        ev.violations,
        "invariant 1: request failed but its order was written",
        server_error_with_order,
    )
    _add(
        ev.notes,
        "request got no answer (or an ambiguous 5xx) but the order was committed; "
        "checked like an accepted order",
        unanswered_with_order,
    )
    ev.counts.orders_created = len(live)
    ev.counts.requests_failed = len(failed)
    return live, failed


def _cancelled_orders(
    snap: Snapshot, live: dict[str, Attempt | None], expect: Expectations, ev: Evaluation
) -> set[str]:
    """The live orders MongoDB holds as cancelled; a cancel's answer must match that."""
    cancelled = {order_id for order_id in live if order_id in snap.cancelled}
    answered_not_written: list[str] = []
    refused_but_written: list[str] = []
    unknown: list[str] = []
    for order_id, a in live.items():
        if a is None or not a.cancel_sent:
            continue
        if a.cancel_accepted and order_id not in cancelled:
            answered_not_written.append(order_id)
        elif not a.cancel_accepted and order_id in cancelled:
            if a.cancel_server_error and expect.strict_server_errors:
                refused_but_written.append(f"{order_id} (HTTP {a.cancel_status})")
            else:
                unknown.append(f"{order_id} ({a.cancel_status or a.cancel_error})")
    _add(
        ev.violations,
        "invariant 1: cancel answered 200 but the order is not cancelled",
        answered_not_written,
    )
    _add(
        ev.violations, "invariant 1: cancel failed but the order was cancelled", refused_but_written
    )
    _add(ev.notes, "cancel got no answer but was committed; checked as cancelled", unknown)
    ev.counts.orders_cancelled = len(cancelled)
    return cancelled


@dataclass
class _Events:
    """The outbox events of the live orders: event id -> (order id, event type)."""

    owner: dict[str, str] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)
    by_order: dict[str, list[OutboxRow]] = field(default_factory=dict)


def _outbox_events(
    snap: Snapshot,
    live: dict[str, Attempt | None],
    cancelled: set[str],
    failed: list[Attempt],
    ev: Evaluation,
) -> _Events:
    """Invariants 1 and 4 on the outbox: one OrderCreated per order, one OrderCancelled per
    cancelled order and none otherwise, all Published; nothing for failed requests."""
    events_by_order: dict[str, list[OutboxRow]] = defaultdict(list)
    for row in snap.outbox:
        events_by_order[row.aggregate_id].append(row)
    events = _Events(by_order=events_by_order)
    no_event: list[str] = []
    extra_events: list[str] = []
    no_cancel_event: list[str] = []
    uncalled_cancel_event: list[str] = []
    not_published: list[str] = []
    failed_events: list[str] = []
    for order_id in live:
        rows = events_by_order.get(order_id, [])
        kinds = Counter(row.event_type for row in rows)
        if not kinds[EVENT_ORDER_CREATED]:
            no_event.append(order_id)
        if kinds[EVENT_ORDER_CREATED] > 1 or kinds[EVENT_ORDER_CANCELLED] > 1:
            extra_events.append(f"{order_id} ({dict(kinds)})")
        if order_id in cancelled and not kinds[EVENT_ORDER_CANCELLED]:
            no_cancel_event.append(order_id)
        if order_id not in cancelled and kinds[EVENT_ORDER_CANCELLED]:
            uncalled_cancel_event.append(order_id)
        for row in rows:
            events.owner[row.event_id] = order_id
            events.kind[row.event_id] = row.event_type
            if row.status == OutboxStatus.PUBLISHED:
                ev.counts.events_published += 1
            elif row.status == OutboxStatus.FAILED:
                failed_events.append(f"{row.event_id} ({row.last_error})")
            else:
                not_published.append(f"{row.event_id} ({row.status}, attempts {row.attempts})")
    _add(ev.violations, "invariant 1: order without an outbox event", no_event)
    _add(ev.violations, "invariant 1: order with more than one event of a type", extra_events)
    _add(
        ev.violations,
        "invariant 1: cancelled order without its OrderCancelled event",
        no_cancel_event,
    )
    _add(
        ev.violations,
        "invariant 1: OrderCancelled event of an order not cancelled",
        uncalled_cancel_event,
    )
    _add(ev.violations, "invariant 4: outbox event Failed", failed_events)
    _add(ev.pending, "outbox events not yet Published", not_published)

    # -- nothing written for failed requests; no stray outbox events ---------------------------
    failed_users = {a.user_id for a in failed}
    ghost_events = [
        f"{row.event_id} (user {row.user_id})" for row in snap.outbox if row.user_id in failed_users
    ]
    _add(ev.violations, "invariant 1: failed request left an outbox event", ghost_events)
    stray = [
        f"{row.event_id} ({row.status})"
        for row in snap.outbox
        if row.aggregate_id not in live
        and row.user_id not in failed_users
        and row.status != OutboxStatus.PUBLISHED
    ]
    _add(ev.pending, "outbox events of unknown orders not yet Published", stray)
    return events


def _relay_records(
    snap: Snapshot, live: dict[str, Attempt | None], events: _Events, ev: Evaluation
) -> None:
    """Invariant 3, relay order: on each topic, per key, the first occurrences of
    aggregateVersion never go down and one key stays on one partition; every record is its
    outbox event; across topics an aggregate's later version was never sent before an earlier
    one (the relay sends v2 only once v1 is acknowledged, so v2's CreateTime is not earlier)."""
    records: dict[tuple[str, str], list[KafkaRow]] = defaultdict(list)
    for rec in snap.published:
        if rec.key is not None:
            records[(rec.topic, rec.key)].append(rec)
    unpublished: list[str] = []
    mismatched: list[str] = []
    out_of_order: list[str] = []
    overtaken: list[str] = []
    for order_id in live:
        first_sent: dict[int, int] = {}  # version -> earliest CreateTime of its records
        topics = {topic_for_event_type(r.event_type) for r in events.by_order.get(order_id, [])}
        for topic in sorted(topics | {t for (t, k) in records if k == order_id}):
            recs = sorted(records.get((topic, order_id), []), key=lambda r: (r.partition, r.offset))
            relayed = [r for r in recs if r.replayed_from is None and not r.injected]
            ev.counts.kafka_records += len(relayed)
            if not relayed:
                if topic in topics:
                    unpublished.append(f"{order_id} on {topic}")
                continue
            if len({r.partition for r in recs}) > 1:
                spread = sorted({r.partition for r in recs})
                out_of_order.append(f"{order_id} spread over partitions {spread} of {topic}")
            first_seen: list[int] = []
            for r in relayed:
                if events.owner.get(r.event_id or "") != order_id:
                    where = f"{order_id}@{topic}/{r.partition}:{r.offset}"
                    mismatched.append(f"{where} idempotencyKey={r.event_id}")
                version = r.aggregate_version
                if version is not None and version not in first_seen:
                    first_seen.append(version)
                if version is not None and r.timestamp is not None:
                    first_sent[version] = min(first_sent.get(version, r.timestamp), r.timestamp)
            if first_seen != sorted(first_seen):
                out_of_order.append(f"{order_id} versions {first_seen} on {topic}")
            distinct = len({r.event_id for r in relayed})
            ev.counts.relay_duplicates += len(relayed) - distinct
        versions = sorted(first_sent)
        for earlier, later in itertools.pairwise(versions):
            if first_sent[later] < first_sent[earlier]:
                overtaken.append(
                    f"{order_id} v{later} sent at {first_sent[later]}, "
                    f"v{earlier} at {first_sent[earlier]}"
                )
    _add(ev.pending, "orders with an event not yet on its topic", unpublished)
    _add(ev.violations, "invariant 3: record headers do not match the outbox event", mismatched)
    _add(ev.violations, "invariant 3: an aggregate's events out of order", out_of_order)
    _add(
        ev.violations,
        "invariant 3: an aggregate's later version sent before an earlier one (out of order "
        "across topics)",
        overtaken,
    )


def _reservations(
    snap: Snapshot, live: dict[str, Attempt | None], cancelled: set[str], ev: Evaluation
) -> None:
    """Invariants 1, 2, 5 and 6 on reservations: one per order, ``reserved`` for a live order
    and ``cancelled`` for a cancelled one (stock is ample: a rejection would be a bug)."""
    reservations_by_order: Counter[str] = Counter(r.order_id for r in snap.reservations)
    missing_reservation: list[str] = []
    rejected: list[str] = []
    double_reserved: list[str] = []
    not_released: list[str] = []
    cancelled_wrongly: list[str] = []
    for order_id in live:
        n = reservations_by_order.get(order_id, 0)
        ev.counts.reservations += n
        if n == 0:
            missing_reservation.append(order_id)
        elif n > 1:
            double_reserved.append(f"{order_id} x{n}")
            ev.counts.duplicate_reservations += n - 1
    for resv in snap.reservations:
        if resv.order_id not in live:
            continue
        if resv.status == "rejected":
            rejected.append(f"{resv.order_id} ({resv.status})")
        elif resv.order_id in cancelled and resv.status != "cancelled":
            # The cancel may still be on its way through order.cancelled.
            not_released.append(f"{resv.order_id} ({resv.status})")
        elif resv.order_id not in cancelled and resv.status != "reserved":
            cancelled_wrongly.append(f"{resv.order_id} ({resv.status})")
    orphans = sorted(
        {r.order_id for r in snap.reservations if r.order_id not in snap.existing_orders}
    )
    early = sorted(
        r.order_id
        for r in snap.reservations
        if r.order_id in live and r.status == "cancelled" and r.event_id is None
    )
    _add(ev.notes, "no stock taken: inventory saw the cancel first", early)
    _add(ev.pending, "orders without a reservation yet", missing_reservation)
    _add(ev.pending, "cancelled orders whose reservation is not cancelled yet", not_released)
    _add(ev.violations, "invariant 5: more than one reservation for an order", double_reserved)
    _add(ev.violations, "invariant 1: reservation not 'reserved' although stock is ample", rejected)
    _add(
        ev.violations,
        "invariant 6: reservation cancelled although its order is not",
        cancelled_wrongly,
    )
    _add(ev.violations, "invariant 2: reservation for an order that does not exist", orphans)


def _stock(snap: Snapshot, ev: Evaluation) -> None:
    """Invariant 6, stock: every seeded SKU holds its initial stock minus the quantities of the
    reservations still ``reserved`` (a cancelled order holds none). Pending, not a violation:
    the snapshot reads stock and reservations at two instants."""
    held: Counter[str] = Counter()
    for resv in snap.reservations:
        if resv.status == "reserved":
            for sku, quantity in resv.items:
                held[sku] += quantity
    wrong = [
        f"{sku}: {snap.stock.get(sku)} != {initial} - {held[sku]}"
        for sku, initial in sorted(snap.initial_stock.items())
        if snap.stock.get(sku) != initial - held[sku]
    ]
    _add(ev.pending, "invariant 6: stock differs from initial minus reserved", wrong)


def _emails(
    snap: Snapshot,
    live: dict[str, Attempt | None],
    cancelled: set[str],
    events: _Events,
    failed: list[Attempt],
    expect: Expectations,
    ev: Evaluation,
) -> None:
    """Invariants 1, 2, 5 and 6 on emails: one confirmation per order that is not cancelled;
    per cancelled order one cancellation and at most one confirmation, never a confirmation
    received after the order's cancellation email (email knew it cancelled by then)."""
    failed_emails = {a.customer_email.lower() for a in failed}
    emails_by_event: Counter[str] = Counter()
    orphan_emails: list[str] = []
    failed_request_emails: list[str] = []
    # order id -> sink file names (they sort in arrival order) of its confirmations, cancellations
    confirmations: dict[str, list[str]] = defaultdict(list)
    cancellations: dict[str, list[str]] = defaultdict(list)
    for e in snap.emails:
        if e.recipient.lower() in failed_emails:
            failed_request_emails.append(f"{e.name} to {e.recipient}")
        if e.event_id is None:
            orphan_emails.append(f"{e.name} (Message-ID {e.message_id!r} names no event)")
        elif e.event_id in events.owner:
            emails_by_event[e.event_id] += 1
            order_id = events.owner[e.event_id]
            if events.kind[e.event_id] == EVENT_ORDER_CANCELLED:
                cancellations[order_id].append(e.name)
            else:
                confirmations[order_id].append(e.name)
        elif e.event_id not in snap.known_events:
            orphan_emails.append(f"{e.name} (event {e.event_id} does not exist)")
    missing_email: list[str] = []
    duplicate_emails: list[str] = []
    for event_id, order_id in events.owner.items():
        n = emails_by_event.get(event_id, 0)
        ev.counts.emails += n
        # A cancelled order's confirmation is optional: none if email saw the cancel first.
        optional = order_id in cancelled and events.kind[event_id] == EVENT_ORDER_CREATED
        if n == 0 and not optional:
            missing_email.append(f"{order_id} ({events.kind[event_id]})")
        elif n > 1:
            duplicate_emails.append(f"{order_id} x{n}")
            ev.counts.duplicate_emails += n - 1
    confirmed_after_cancel = [
        order_id
        for order_id in cancelled
        if cancellations.get(order_id)
        and any(name > min(cancellations[order_id]) for name in confirmations.get(order_id, []))
    ]
    cancel_first = sorted(o for o in cancelled if cancellations.get(o) and not confirmations.get(o))
    _add(ev.notes, "no confirmation: email saw the cancel first", cancel_first)
    _add(ev.pending, "orders without an email yet", missing_email)
    _add(ev.violations, "invariant 2: email for an order that does not exist", orphan_emails)
    _add(ev.violations, "invariant 1: failed request got an email", failed_request_emails)
    _add(
        ev.violations,
        "invariant 6: confirmation received after the order's cancellation email",
        confirmed_after_cancel,
    )
    # One crash inside the window yields one extra copy of that email, never two.
    tripled = [d for d in duplicate_emails if not d.endswith(" x2")]
    if ev.counts.duplicate_emails > expect.max_duplicate_emails or tripled:
        _add(
            ev.violations,
            "invariant 5: more than one email for an order "
            f"(tolerated here: {expect.max_duplicate_emails}, one extra copy each)",
            duplicate_emails,
        )
    else:
        _add(ev.notes, "duplicate emails inside the documented crash window", duplicate_emails)


def _dead_letters(snap: Snapshot, expect: Expectations, ev: Evaluation) -> None:
    """Invariant 4: the DLQ holds exactly the injected records, with reasons."""
    seen: Counter[tuple[str, str]] = Counter()
    unexpected: list[str] = []
    no_reason: list[str] = []
    for d in snap.dlq:
        ident = (d.key or "", d.group)
        seen[ident] += 1
        if ident not in expect.dlq:
            unexpected.append(f"{d.partition}:{d.offset} key={d.key} group={d.group} ({d.reason})")
        elif not d.reason.strip():
            no_reason.append(f"{d.partition}:{d.offset}")
    ev.counts.dlq_records = len(snap.dlq)
    missing_dlq = [f"{k}/{g}" for (k, g) in expect.dlq if seen[(k, g)] == 0]
    copies = [f"{k}/{g} x{n}" for (k, g), n in seen.items() if (k, g) in expect.dlq and n > 1]
    _add(ev.violations, "invariant 4: unexpected DLQ record", unexpected)
    _add(ev.violations, "invariant 4: DLQ record without a failure reason", no_reason)
    _add(ev.pending, "injected poison not in the DLQ yet", missing_dlq)
    _add(ev.notes, "DLQ holds more than one copy (crash between DLQ ack and commit)", copies)
