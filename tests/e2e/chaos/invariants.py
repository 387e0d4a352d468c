"""The invariants of the failure-injection suite, as pure functions over a snapshot.

The harness collects a :class:`Snapshot` (what the load generator was told, and what MongoDB,
Kafka, the DLQ and the SMTP sink hold) and :func:`evaluate` turns it into two lists:

* ``pending``: conditions that may still resolve (an event not yet published, an email not yet
  received, a consumer group with uncommitted records, an order still ``placed``). The harness
  polls until this is empty; whatever is left at the deadline becomes a violation.
* ``violations``: conditions that no amount of waiting fixes (a second reservation, an email for
  an order that does not exist, a failed request that left an order behind, events of one
  aggregate published out of order, an unexpected DLQ record, a confirmation for an order
  inventory rejected).

The loop is closed (issue 22): inventory answers every ``OrderCreated`` with a verdict through
its own outbox (``StockReserved`` or ``StockRejected``, version 1 of the order's reservation,
and ``StockReleased``, version 2, when a reserved order is cancelled); the order follows it
(``placed`` -> ``confirmed`` | ``rejected``, ``placed | confirmed`` -> ``cancelled``), and email
tells the customer the verdict. Invariant 7 says every order ends in one terminal state reached
along the state machine, invariant 8 that the order, inventory and the emails agree on it.

No I/O here, so the rules are unit-tested with hand-made snapshots.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from services.inventory.models import ReservationStatus
from services.order.schemas import OrderStatus
from shared.contracts import (
    EVENT_ORDER_CANCELLED,
    EVENT_ORDER_CREATED,
    EVENT_STOCK_REJECTED,
    EVENT_STOCK_RELEASED,
    EVENT_STOCK_RESERVED,
    INVENTORY_TOPICS,
    ORDER_CREATED_TOPIC,
    ORDER_TOPICS,
    OutboxStatus,
    topic_for_event_type,
)
from tests.e2e.chaos.report import Counts

# Shown per violation; a scenario with 300 broken orders does not need 300 lines to say so.
MAX_EXAMPLES = 5

# The order's statuses (the order API's) and the steps between them.
PLACED: Final = OrderStatus.PLACED.value
CONFIRMED: Final = OrderStatus.CONFIRMED.value
REJECTED: Final = OrderStatus.REJECTED.value
CANCELLED: Final = OrderStatus.CANCELLED.value
TERMINAL: Final = frozenset({CONFIRMED, REJECTED, CANCELLED})
STEPS: Final = frozenset(
    {(PLACED, CONFIRMED), (PLACED, REJECTED), (PLACED, CANCELLED), (CONFIRMED, CANCELLED)}
)
# A reservation's statuses (inventory's): stock held, refused (nothing taken), given back (or
# never taken: a cancel seen first).
HELD: Final = ReservationStatus.RESERVED.value
REFUSED: Final = ReservationStatus.REJECTED.value
RELEASED: Final = ReservationStatus.CANCELLED.value
# The mail each event makes email send (none for OrderCreated: one mail per outcome, and a
# mail on OrderCreated is the very bug the verdict fixes; none for StockReleased: the
# cancellation notice already told the customer).
MAIL_OF_EVENT: Final = {
    EVENT_STOCK_RESERVED: "confirmation",
    EVENT_STOCK_REJECTED: "rejection notice",
    EVENT_ORDER_CANCELLED: "cancellation notice",
}


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
    def cancel_refused(self) -> bool:
        """409: the API refused the cancel because of the order's state (rejected)."""
        return self.cancel_status == 409

    @property
    def cancel_server_error(self) -> bool:
        return self.cancel_status is not None and self.cancel_status >= 500


@dataclass(frozen=True)
class OutboxRow:
    """An event of either outbox: the order's (``aggregateId`` the order id, ``userId`` read
    from its payload) or inventory's (``aggregateId`` the order id too, no user)."""

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
class HistoryRow:
    """One stored step of an order's history: the status after it, and the event that caused
    it (None: an API call)."""

    status: str
    event_id: str | None = None
    cause: str = ""


@dataclass(frozen=True)
class EmailRow:
    name: str  # the sink's file name: names sort in arrival order
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
    topic: str = ""  # the DLQ topic holding it


@dataclass
class Snapshot:
    attempts: list[Attempt]
    orders: dict[str, str]  # userId -> order id, for the users of this scenario
    outbox: list[OutboxRow]  # the order outbox's events created during the scenario
    known_events: dict[str, str]  # event id -> aggregate id, for every event an email names
    reservations: list[ReservationRow]  # every reservation in the pipeline's database
    existing_orders: set[str]  # which of the reservations' order ids exist as orders
    emails: list[EmailRow]  # received since the scenario began
    published: list[KafkaRow]  # records of every event topic (order.*, inventory.*) since start
    dlq: list[DlqRow]  # records of every DLQ topic since the scenario began
    uncommitted: dict[str, int]  # consumer group -> records since the start not yet committed
    # order id -> status, for the orders of this scenario's users.
    statuses: dict[str, str] = field(default_factory=dict)
    # order id -> the steps its document stores (the placement is implicit).
    histories: dict[str, list[HistoryRow]] = field(default_factory=dict)
    # Inventory's outbox: its verdicts and releases created during the scenario.
    inventory_outbox: list[OutboxRow] = field(default_factory=list)
    # Stock of the SKUs the suite seeded: what it was seeded with, what it is now. Empty: the
    # stock convergence check is skipped.
    initial_stock: dict[str, int] = field(default_factory=dict)
    stock: dict[str, int] = field(default_factory=dict)
    # SKUs seeded with a small stock so that some orders are rejected; every other SKU is
    # ample, and a rejection of an order that asked for none of these is a bug.
    short_supply: set[str] = field(default_factory=set)

    @property
    def cancelled(self) -> set[str]:
        return {order_id for order_id, status in self.statuses.items() if status == CANCELLED}


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
    statuses = _order_statuses(snap, live, expect, ev)
    cancelled = {order_id for order_id, status in statuses.items() if status == CANCELLED}
    events = _outbox_events(snap, live, cancelled, failed, ev)
    verdicts = _inventory_events(snap, live, ev)
    order_records = [r for r in snap.published if r.topic in ORDER_TOPICS]
    _relay_records(order_records, live, events, ev)
    inventory_records = [r for r in snap.published if r.topic in INVENTORY_TOPICS]
    _relay_records(inventory_records, live, verdicts, ev)
    _reservations(snap, live, statuses, verdicts, ev)
    _stock(snap, ev)
    _histories(snap, statuses, verdicts, ev)
    _emails(snap, live, statuses, events, verdicts, failed, expect, ev)
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


def _order_statuses(
    snap: Snapshot, live: dict[str, Attempt | None], expect: Expectations, ev: Evaluation
) -> dict[str, str]:
    """Invariant 7 on the order: every live order ends ``confirmed``, ``rejected`` or
    ``cancelled`` (``placed`` is pending: the verdict is on its way). Invariant 1 on the
    cancels: a cancel's answer matches where the order ends (200: cancelled; 5xx: not
    cancelled; 409: the API refused it because inventory had rejected the order)."""
    statuses = {order_id: snap.statuses[order_id] for order_id in live if order_id in snap.statuses}
    answered_not_written: list[str] = []
    refused_but_written: list[str] = []
    refused_not_rejected: list[str] = []
    unknown: list[str] = []
    for order_id, a in live.items():
        if a is None or not a.cancel_sent:
            continue
        status = statuses.get(order_id)
        if a.cancel_accepted and status != CANCELLED:
            answered_not_written.append(f"{order_id} ({status})")
        elif a.cancel_refused and status != REJECTED:
            refused_not_rejected.append(f"{order_id} ({status})")
        elif not a.cancel_accepted and status == CANCELLED:
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
    _add(
        ev.violations,
        "invariant 1: cancel refused (409) but the order is not rejected",
        refused_not_rejected,
    )
    _add(ev.notes, "cancel got no answer but was committed; checked as cancelled", unknown)
    placed = sorted(o for o, s in statuses.items() if s == PLACED)
    strange = sorted(f"{o} ({s!r})" for o, s in statuses.items() if s not in TERMINAL | {PLACED})
    _add(ev.pending, "invariant 7: orders not in a terminal state yet (placed)", placed)
    _add(ev.violations, "invariant 7: order in a state the API does not define", strange)
    ending = Counter(statuses.values())
    ev.counts.orders_confirmed = ending[CONFIRMED]
    ev.counts.orders_rejected = ending[REJECTED]
    ev.counts.orders_cancelled = ending[CANCELLED]
    return statuses


@dataclass
class _Events:
    """The events of one outbox: event id -> order id and event type (live orders only), and
    every event by order id."""

    owner: dict[str, str] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)
    by_order: dict[str, list[OutboxRow]] = field(default_factory=dict)


def _index(rows: Iterable[OutboxRow], live: dict[str, Attempt | None]) -> _Events:
    by_order: dict[str, list[OutboxRow]] = defaultdict(list)
    events = _Events(by_order=by_order)
    for row in rows:
        by_order[row.aggregate_id].append(row)
        if row.aggregate_id in live:
            events.owner[row.event_id] = row.aggregate_id
            events.kind[row.event_id] = row.event_type
    return events


def _publication(
    events: _Events, live: dict[str, Attempt | None], outbox: str, ev: Evaluation
) -> None:
    """Invariant 4 on one outbox: every event of a live order ends ``Published`` (pending until
    then), none ``Failed``: no event is lost, whatever crashed between its transaction and its
    relay's publish."""
    not_published: list[str] = []
    failed_events: list[str] = []
    for order_id in live:
        for row in events.by_order.get(order_id, []):
            if row.status == OutboxStatus.PUBLISHED:
                ev.counts.events_published += 1
            elif row.status == OutboxStatus.FAILED:
                failed_events.append(f"{row.event_id} ({row.last_error})")
            else:
                not_published.append(f"{row.event_id} ({row.status}, attempts {row.attempts})")
    _add(ev.violations, f"invariant 4: {outbox} event Failed", failed_events)
    _add(ev.pending, f"{outbox} events not yet Published", not_published)


def _outbox_events(
    snap: Snapshot,
    live: dict[str, Attempt | None],
    cancelled: set[str],
    failed: list[Attempt],
    ev: Evaluation,
) -> _Events:
    """Invariants 1 and 4 on the order outbox: one OrderCreated per order, one OrderCancelled
    per cancelled order and none otherwise, all Published; nothing for failed requests."""
    events = _index(snap.outbox, live)
    no_event: list[str] = []
    extra_events: list[str] = []
    no_cancel_event: list[str] = []
    uncalled_cancel_event: list[str] = []
    for order_id in live:
        kinds = Counter(row.event_type for row in events.by_order.get(order_id, []))
        if not kinds[EVENT_ORDER_CREATED]:
            no_event.append(order_id)
        if kinds[EVENT_ORDER_CREATED] > 1 or kinds[EVENT_ORDER_CANCELLED] > 1:
            extra_events.append(f"{order_id} ({dict(kinds)})")
        if order_id in cancelled and not kinds[EVENT_ORDER_CANCELLED]:
            no_cancel_event.append(order_id)
        if order_id not in cancelled and kinds[EVENT_ORDER_CANCELLED]:
            uncalled_cancel_event.append(order_id)
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
    _publication(events, live, "order outbox", ev)

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


def _inventory_events(snap: Snapshot, live: dict[str, Attempt | None], ev: Evaluation) -> _Events:
    """Invariants 4 and 8 on inventory's outbox: at most one verdict per order (StockReserved
    or StockRejected, version 1), a release (StockReleased, version 2) only of stock it
    reserved, every event of a live order Published (no inventory event lost)."""
    verdicts = _index(snap.inventory_outbox, live)
    contradictory: list[str] = []
    for order_id in live:
        kinds = Counter(row.event_type for row in verdicts.by_order.get(order_id, []))
        two_verdicts = kinds[EVENT_STOCK_RESERVED] + kinds[EVENT_STOCK_REJECTED] > 1
        odd_release = kinds[EVENT_STOCK_RELEASED] > min(1, kinds[EVENT_STOCK_RESERVED])
        if two_verdicts or odd_release:
            contradictory.append(f"{order_id} ({dict(kinds)})")
    _add(
        ev.violations,
        "invariant 8: inventory announced two verdicts, or released stock it never reserved",
        contradictory,
    )
    _publication(verdicts, live, "inventory outbox", ev)
    stray = [
        f"{row.event_id} ({row.event_type}, {row.status})"
        for row in snap.inventory_outbox
        if row.aggregate_id not in live and row.status != OutboxStatus.PUBLISHED
    ]
    _add(ev.pending, "inventory outbox events of unknown orders not yet Published", stray)
    return verdicts


def _relay_records(
    records: list[KafkaRow], live: dict[str, Attempt | None], events: _Events, ev: Evaluation
) -> None:
    """Invariant 3, relay order, for one outbox's topics (``records``) and events: on each topic,
    per key, the first occurrences of aggregateVersion never go down and one key stays on one
    partition; every record is its outbox event; across topics an aggregate's later version was
    never sent before an earlier one (the relay sends v2 only once v1 is acknowledged, so v2's
    CreateTime is not earlier)."""
    by_key: dict[tuple[str, str], list[KafkaRow]] = defaultdict(list)
    for rec in records:
        if rec.key is not None:
            by_key[(rec.topic, rec.key)].append(rec)
    unpublished: list[str] = []
    mismatched: list[str] = []
    out_of_order: list[str] = []
    overtaken: list[str] = []
    for order_id in live:
        first_sent: dict[int, int] = {}  # version -> earliest CreateTime of its records
        topics = {topic_for_event_type(r.event_type) for r in events.by_order.get(order_id, [])}
        for topic in sorted(topics | {t for (t, k) in by_key if k == order_id}):
            recs = sorted(by_key.get((topic, order_id), []), key=lambda r: (r.partition, r.offset))
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


# The reservation status each terminal state of the order calls for.
_RESERVATION_OF: Final = {CONFIRMED: HELD, REJECTED: REFUSED, CANCELLED: RELEASED}


def _announced(resv: ReservationRow) -> set[str]:
    """The inventory events a reservation's state implies in its outbox (the same transaction
    writes both); for a cancelled one, the verdict before the cancel is read from the outbox."""
    if resv.status == HELD:
        return {EVENT_STOCK_RESERVED}
    if resv.status == REFUSED:
        return {EVENT_STOCK_REJECTED}
    return set()


def _reservations(
    snap: Snapshot,
    live: dict[str, Attempt | None],
    statuses: dict[str, str],
    verdicts: _Events,
    ev: Evaluation,
) -> None:
    """Invariants 1, 2, 5 and 8 on reservations: one per order, in the state the order ends in
    (``reserved`` for a confirmed order, ``rejected`` for a rejected one, ``cancelled``, stock
    back, for a cancelled one), a rejection only of an order that asked for a SKU in short
    supply, and inventory's outbox announcing what the reservation records."""
    reservations_by_order: Counter[str] = Counter(r.order_id for r in snap.reservations)
    missing_reservation: list[str] = []
    double_reserved: list[str] = []
    not_released: list[str] = []
    disagree: list[str] = []
    cancelled_wrongly: list[str] = []
    rejected_with_stock: list[str] = []
    unannounced: list[str] = []
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
        order_id, status = resv.order_id, statuses.get(resv.order_id)
        if resv.status == REFUSED and not any(sku in snap.short_supply for sku, _ in resv.items):
            rejected_with_stock.append(f"{order_id} ({', '.join(s for s, _ in resv.items)})")
        if status == CANCELLED:
            if resv.status != RELEASED:
                # The cancel may still be on its way through order.cancelled.
                not_released.append(f"{order_id} ({resv.status})")
        elif resv.status == RELEASED:
            cancelled_wrongly.append(f"{order_id} (order {status})")
        elif status in _RESERVATION_OF and resv.status != _RESERVATION_OF[status]:
            disagree.append(f"{order_id}: order {status}, reservation {resv.status}")
        kinds = {r.event_type for r in verdicts.by_order.get(order_id, [])}
        if resv.status == RELEASED and EVENT_STOCK_RESERVED in kinds:
            wanted = {EVENT_STOCK_RESERVED, EVENT_STOCK_RELEASED}  # stock back, and said so
        elif resv.status == RELEASED:
            wanted = kinds & {EVENT_STOCK_REJECTED}  # nothing taken: nothing to release
        else:
            wanted = _announced(resv)
        if kinds != wanted:
            unannounced.append(f"{order_id}: {resv.status}, outbox {sorted(kinds)}")
    orphans = sorted(
        {r.order_id for r in snap.reservations if r.order_id not in snap.existing_orders}
    )
    early = sorted(
        r.order_id
        for r in snap.reservations
        if r.order_id in live and r.status == RELEASED and r.event_id is None
    )
    _add(ev.notes, "no stock taken: inventory saw the cancel first", early)
    _add(ev.pending, "orders without a reservation yet", missing_reservation)
    _add(ev.pending, "cancelled orders whose reservation is not cancelled yet", not_released)
    # Pending, not a violation: the snapshot reads the outbox and the reservations at two
    # instants, and inventory writes both in one transaction.
    _add(ev.pending, "invariant 8: reservation and inventory's outbox disagree", unannounced)
    _add(ev.violations, "invariant 5: more than one reservation for an order", double_reserved)
    _add(
        ev.violations,
        "invariant 8: reservation rejected although every SKU it asked for is ample",
        rejected_with_stock,
    )
    _add(
        ev.violations,
        "invariant 6: reservation cancelled although its order is not",
        cancelled_wrongly,
    )
    _add(ev.violations, "invariant 8: the order's state and its reservation disagree", disagree)
    _add(ev.violations, "invariant 2: reservation for an order that does not exist", orphans)


def _stock(snap: Snapshot, ev: Evaluation) -> None:
    """Invariant 6, stock: every seeded SKU holds its initial stock minus the quantities of the
    reservations still ``reserved`` (a cancelled or rejected order holds none). Pending, not a
    violation: the snapshot reads stock and reservations at two instants."""
    held: Counter[str] = Counter()
    for resv in snap.reservations:
        if resv.status == HELD:
            for sku, quantity in resv.items:
                held[sku] += quantity
    wrong = [
        f"{sku}: {snap.stock.get(sku)} != {initial} - {held[sku]}"
        for sku, initial in sorted(snap.initial_stock.items())
        if snap.stock.get(sku) != initial - held[sku]
    ]
    _add(ev.pending, "invariant 6: stock differs from initial minus reserved", wrong)


def _histories(
    snap: Snapshot,
    statuses: dict[str, str],
    verdicts: _Events,
    ev: Evaluation,
) -> None:
    """Invariant 7 on the order's history: its steps go along the state machine from
    ``placed`` and end in the order's status, so an order reaches exactly one terminal state
    (a confirmation may only be followed by a cancel); each event is applied once (a
    redelivered or replayed verdict adds no second step); a confirmed or rejected order's step
    names inventory's verdict event."""
    off_machine: list[str] = []
    ends_elsewhere: list[str] = []
    applied_twice: list[str] = []
    unnamed_verdict: list[str] = []
    for order_id, status in statuses.items():
        steps = snap.histories.get(order_id, [])
        path = [PLACED]
        for step in steps:
            if step.status != path[-1]:
                path.append(step.status)
        if any(step not in STEPS for step in itertools.pairwise(path)):
            off_machine.append(f"{order_id}: {' -> '.join(path)}")
        if path[-1] != status:
            ends_elsewhere.append(f"{order_id}: history ends {path[-1]}, order is {status}")
        applied = Counter(step.event_id for step in steps if step.event_id)
        applied_twice += [f"{order_id}: event {e} x{n}" for e, n in applied.items() if n > 1]
        if status in (CONFIRMED, REJECTED):
            verdict_ids = {
                row.event_id
                for row in verdicts.by_order.get(order_id, [])
                if row.event_type in (EVENT_STOCK_RESERVED, EVENT_STOCK_REJECTED)
            }
            if not {step.event_id for step in steps if step.status == status} & verdict_ids:
                unnamed_verdict.append(f"{order_id} ({status})")
    _add(ev.violations, "invariant 7: history steps off the state machine", off_machine)
    _add(ev.violations, "invariant 7: history does not end in the order's status", ends_elsewhere)
    _add(ev.violations, "invariant 7: an event applied to an order twice", applied_twice)
    _add(
        ev.violations,
        "invariant 8: verdict step of the order names no verdict inventory announced",
        unnamed_verdict,
    )


def _emails(
    snap: Snapshot,
    live: dict[str, Attempt | None],
    statuses: dict[str, str],
    events: _Events,
    verdicts: _Events,
    failed: list[Attempt],
    expect: Expectations,
    ev: Evaluation,
) -> None:
    """Invariants 1, 2, 5 and 8 on emails, per order, the mails its terminal state calls for:
    confirmed, one confirmation; rejected, one rejection notice and no confirmation; cancelled,
    one cancellation notice and at most one verdict mail, received before it, never after. No
    mail answers OrderCreated (the customer hears "confirmed" only once stock is taken), none
    an order or event that does not exist."""
    owner = {**events.owner, **verdicts.owner}
    kind = {**events.kind, **verdicts.kind}
    failed_emails = {a.customer_email.lower() for a in failed}
    emails_by_event: Counter[str] = Counter()
    orphan_emails: list[str] = []
    failed_request_emails: list[str] = []
    unasked: list[str] = []
    # order id -> mail -> sink file names (they sort in arrival order)
    mails: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for e in snap.emails:
        if e.recipient.lower() in failed_emails:
            failed_request_emails.append(f"{e.name} to {e.recipient}")
        if e.event_id is None:
            orphan_emails.append(f"{e.name} (Message-ID {e.message_id!r} names no event)")
        elif e.event_id in owner:
            emails_by_event[e.event_id] += 1
            mail = MAIL_OF_EVENT.get(kind[e.event_id])
            if mail is None:
                unasked.append(f"{e.name} ({kind[e.event_id]} of {owner[e.event_id]})")
            else:
                mails[owner[e.event_id]][mail].append(e.name)
        elif e.event_id not in snap.known_events:
            orphan_emails.append(f"{e.name} (event {e.event_id} does not exist)")
    required_for = {"confirmation": CONFIRMED, "rejection notice": REJECTED}
    missing_email: list[str] = []
    duplicate_emails: list[str] = []
    for event_id, order_id in owner.items():
        mail = MAIL_OF_EVENT.get(kind[event_id])
        if mail is None:
            continue
        n = emails_by_event.get(event_id, 0)
        ev.counts.emails += n
        # A cancelled order's verdict mail is optional: none if email saw the cancel first.
        required = required_for.get(mail, CANCELLED) == statuses.get(order_id)
        if n == 0 and required:
            missing_email.append(f"{order_id} ({mail})")
        elif n > 1:
            duplicate_emails.append(f"{order_id} x{n}")
            ev.counts.duplicate_emails += n - 1
    told_wrong: list[str] = []
    verdict_after_cancel: list[str] = []
    for order_id, sent in mails.items():
        status = statuses.get(order_id)
        if sent["confirmation"] and sent["rejection notice"]:
            told_wrong.append(f"{order_id}: told confirmed and rejected")
        elif sent["confirmation"] and status == REJECTED:
            told_wrong.append(f"{order_id}: told confirmed, order rejected")
        elif sent["rejection notice"] and status == CONFIRMED:
            told_wrong.append(f"{order_id}: told rejected, order confirmed")
        verdict_mails = sent["confirmation"] + sent["rejection notice"]
        if sent["cancellation notice"] and any(
            name > min(sent["cancellation notice"]) for name in verdict_mails
        ):
            verdict_after_cancel.append(order_id)
    cancel_first = sorted(
        o
        for o in live
        if statuses.get(o) == CANCELLED
        and mails[o]["cancellation notice"]
        and not mails[o]["confirmation"] + mails[o]["rejection notice"]
    )
    _add(ev.notes, "no verdict mail: email saw the cancel first", cancel_first)
    _add(ev.pending, "orders without an email yet", missing_email)
    _add(ev.violations, "invariant 2: email for an order that does not exist", orphan_emails)
    _add(ev.violations, "invariant 1: failed request got an email", failed_request_emails)
    _add(ev.violations, "invariant 8: email for an event that calls for none", unasked)
    _add(ev.violations, "invariant 8: the customer was told the wrong verdict", told_wrong)
    _add(
        ev.violations,
        "invariant 8: verdict mail received after the order's cancellation notice",
        verdict_after_cancel,
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
