"""The five invariants of the failure-injection suite, as pure functions over a snapshot.

The harness collects a :class:`Snapshot` (what the load generator was told, and what MongoDB,
Kafka, the DLQ and the SMTP sink hold) and :func:`evaluate` turns it into two lists:

* ``pending``: conditions that may still resolve (an event not yet published, an email not yet
  received, a consumer group with uncommitted records). The harness polls until this is empty;
  whatever is left at the deadline becomes a violation.
* ``violations``: conditions that no amount of waiting fixes (a second reservation, an email for
  an order that does not exist, a failed request that left an order behind, events of one
  aggregate published out of order, an unexpected DLQ record).

No I/O here, so the rules are unit-tested with hand-made snapshots.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from shared.contracts import OutboxStatus
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

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.order_id is not None

    @property
    def server_error(self) -> bool:
        return self.status is not None and self.status >= 500


@dataclass(frozen=True)
class OutboxRow:
    event_id: str
    aggregate_id: str
    aggregate_version: int
    status: str
    user_id: str | None
    attempts: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class ReservationRow:
    order_id: str
    event_id: str | None
    status: str


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
    published: list[KafkaRow]  # order.created records since the scenario began
    dlq: list[DlqRow]  # order.created.dlq records since the scenario began
    uncommitted: dict[str, int]  # consumer group -> records since the start not yet committed


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
    """Check invariants 1-5 on ``snap``; see the module docstring for pending vs violation."""
    ev = Evaluation()

    # -- which orders exist: accepted ones, plus failed requests whose order exists anyway ----
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

    # -- invariant 1: one Published outbox event per live order -------------------------------
    events_by_order: dict[str, list[OutboxRow]] = defaultdict(list)
    for row in snap.outbox:
        events_by_order[row.aggregate_id].append(row)
    no_event: list[str] = []
    extra_events: list[str] = []
    not_published: list[str] = []
    failed_events: list[str] = []
    event_ids: dict[str, str] = {}  # event id -> order id, for the live orders
    for order_id in live:
        rows = events_by_order.get(order_id, [])
        if not rows:
            no_event.append(order_id)
            continue
        if len(rows) > 1:
            extra_events.append(f"{order_id} ({len(rows)} events)")
        for row in rows:
            event_ids[row.event_id] = order_id
            if row.status == OutboxStatus.PUBLISHED:
                ev.counts.events_published += 1
            elif row.status == OutboxStatus.FAILED:
                failed_events.append(f"{row.event_id} ({row.last_error})")
            else:
                not_published.append(f"{row.event_id} ({row.status}, attempts {row.attempts})")
    _add(ev.violations, "invariant 1: order without an outbox event", no_event)
    _add(ev.violations, "invariant 1: order with more than one OrderCreated event", extra_events)
    _add(ev.violations, "invariant 4: outbox event Failed", failed_events)
    _add(ev.pending, "outbox events not yet Published", not_published)

    # -- nothing written for failed requests; no stray outbox events ---------------------------
    failed_users = {a.user_id for a in failed}
    failed_emails = {a.customer_email.lower() for a in failed}
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

    # -- invariant 3: Kafka records, per-aggregate order, relay duplicates ---------------------
    records_by_key: dict[str, list[KafkaRow]] = defaultdict(list)
    for rec in snap.published:
        if rec.key is not None:
            records_by_key[rec.key].append(rec)
    unpublished: list[str] = []
    mismatched: list[str] = []
    out_of_order: list[str] = []
    for order_id in live:
        recs = sorted(records_by_key.get(order_id, []), key=lambda r: (r.partition, r.offset))
        relayed = [r for r in recs if r.replayed_from is None and not r.injected]
        ev.counts.kafka_records += len(relayed)
        if not relayed:
            if events_by_order.get(order_id):
                unpublished.append(order_id)
            continue
        if len({r.partition for r in recs}) > 1:
            spread = sorted({r.partition for r in recs})
            out_of_order.append(f"{order_id} spread over partitions {spread}")
        first_seen: list[int] = []
        for r in relayed:
            if r.event_id not in event_ids or event_ids[r.event_id] != order_id:
                where = f"{order_id}@{r.partition}:{r.offset}"
                mismatched.append(f"{where} idempotencyKey={r.event_id}")
            if r.aggregate_version is not None and r.aggregate_version not in first_seen:
                first_seen.append(r.aggregate_version)
        if first_seen != sorted(first_seen):
            out_of_order.append(f"{order_id} versions {first_seen}")
        distinct = len({r.event_id for r in relayed})
        ev.counts.relay_duplicates += len(relayed) - distinct
    _add(ev.pending, "orders with no record in order.created yet", unpublished)
    _add(ev.violations, "invariant 3: record headers do not match the outbox event", mismatched)
    _add(ev.violations, "invariant 3: an aggregate's events out of order", out_of_order)

    # -- invariants 1, 2, 5: reservations ------------------------------------------------------
    reservations_by_order: Counter[str] = Counter(r.order_id for r in snap.reservations)
    missing_reservation: list[str] = []
    rejected: list[str] = []
    double_reserved: list[str] = []
    for order_id in live:
        n = reservations_by_order.get(order_id, 0)
        ev.counts.reservations += n
        if n == 0:
            missing_reservation.append(order_id)
        elif n > 1:
            double_reserved.append(f"{order_id} x{n}")
            ev.counts.duplicate_reservations += n - 1
    for resv in snap.reservations:
        if resv.order_id in live and resv.status != "reserved":
            rejected.append(f"{resv.order_id} ({resv.status})")
    orphans = sorted(
        {r.order_id for r in snap.reservations if r.order_id not in snap.existing_orders}
    )
    _add(ev.pending, "orders without a reservation yet", missing_reservation)
    _add(ev.violations, "invariant 5: more than one reservation for an order", double_reserved)
    _add(ev.violations, "invariant 1: reservation not 'reserved' although stock is ample", rejected)
    _add(ev.violations, "invariant 2: reservation for an order that does not exist", orphans)

    # -- invariants 1, 2, 5: emails ------------------------------------------------------------
    emails_by_event: Counter[str] = Counter()
    orphan_emails: list[str] = []
    failed_request_emails: list[str] = []
    for e in snap.emails:
        if e.recipient.lower() in failed_emails:
            failed_request_emails.append(f"{e.name} to {e.recipient}")
        if e.event_id is None:
            orphan_emails.append(f"{e.name} (Message-ID {e.message_id!r} names no event)")
        elif e.event_id in event_ids:
            emails_by_event[e.event_id] += 1
        elif e.event_id not in snap.known_events:
            orphan_emails.append(f"{e.name} (event {e.event_id} does not exist)")
    missing_email: list[str] = []
    duplicate_emails: list[str] = []
    for event_id, order_id in event_ids.items():
        n = emails_by_event.get(event_id, 0)
        ev.counts.emails += n
        if n == 0:
            missing_email.append(order_id)
        elif n > 1:
            duplicate_emails.append(f"{order_id} x{n}")
            ev.counts.duplicate_emails += n - 1
    _add(ev.pending, "orders without an email yet", missing_email)
    _add(ev.violations, "invariant 2: email for an order that does not exist", orphan_emails)
    _add(ev.violations, "invariant 1: failed request got an email", failed_request_emails)
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

    # -- invariant 4: the DLQ holds exactly the injected records, with reasons -----------------
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

    # -- consumers caught up: nothing left that could still add an effect ----------------------
    behind = [f"{g}: {n}" for g, n in sorted(snap.uncommitted.items()) if n > 0]
    _add(ev.pending, "consumer groups with uncommitted records", behind)
    return ev
