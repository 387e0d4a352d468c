"""Pure parts of the capacity ramp: the verdict on each offered rate, and the upper bound that
the raw MongoDB transaction rate puts on each design.

The ramp (bench/capacity.py) offers rising open-loop rates; a rate is *sustained* when every
order completed every step (reservation and email) within the settle window and the p99 from
the scheduled send time to the reservation's commit is at most :data:`P99_LIMIT_MS`. The
capacity is the highest sustained rate below the first one that is not: a higher rate that
happens to pass after a failure is noise, not capacity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

P99_LIMIT_MS: Final = 250.0


@dataclass(frozen=True)
class Step:
    """What one offered rate of the ramp produced."""

    offered_rate: float
    achieved_rate: float
    orders: int
    incomplete: int  # orders without a reservation or an email at the end of the settle window
    p99_reservation_ms: float
    in_flight_cap_hits: int = 0


def step_sustained(step: Step, p99_limit_ms: float = P99_LIMIT_MS) -> tuple[bool, str]:
    """Whether ``step`` passed, and why not."""
    if step.orders == 0:
        return False, "no order was accepted"
    if step.incomplete:
        return False, f"{step.incomplete} of {step.orders} orders did not complete every step"
    if not step.p99_reservation_ms <= p99_limit_ms:
        return False, f"p99 to reservation {step.p99_reservation_ms} ms > {p99_limit_ms} ms"
    if step.in_flight_cap_hits:
        return False, f"the in-flight cap was hit {step.in_flight_cap_hits} times (closed loop)"
    return True, "sustained"


def ramp_capacity(steps: Sequence[Step], p99_limit_ms: float = P99_LIMIT_MS) -> float | None:
    """Highest offered rate sustained before the first failing step (None: none sustained)."""
    best: float | None = None
    for step in sorted(steps, key=lambda s: s.offered_rate):
        ok, _ = step_sustained(step, p99_limit_ms)
        if not ok:
            break
        best = step.offered_rate
    return best


def ramp_goes_on(step: Step, *, held_to_p99: bool) -> bool:
    """Whether a ramp offers the next rate after ``step``. A ramp held to the p99 limit (ours)
    stops at the first rate it does not sustain; one that is not (the article's, whose 500 ms
    poll breaks the limit at every rate) goes on while every order still completes. Both stop
    at the first incomplete order: the next rate would start from a backlog."""
    return step_sustained(step, P99_LIMIT_MS if held_to_p99 else math.inf)[0]


@dataclass(frozen=True)
class OrderCost:
    """MongoDB work one order costs a design, counted from its code.

    ``commits``: transactions plus standalone writes (each its own commit and journal flush);
    ``writes``: documents inserted or updated.
    """

    design: str
    commits: float
    writes: float
    breakdown: str


# Counted from the code (services/order/handlers.py, services/inventory/handlers.py,
# services/relay/publisher.py, bench/article_relay.py); two order lines, as the bench sends.
# Inventory: one transaction inserting the reservation and $inc-ing the stock of each line.
_INVENTORY_WRITES: Final = 1 + 2


def order_costs(relay_batch: float = 1.0) -> list[OrderCost]:
    """Each design's cost per order; ``relay_batch`` is how many events our relay marks in one
    fenced transaction (1 at light load, the worst case for us). That transaction writes each
    event's mark (one bulk write) and moves the slot's fence document once."""
    return [
        OrderCost(
            design="ours",
            commits=1 + 1 / relay_batch + 1,
            writes=2 + 1 + 1 / relay_batch + _INVENTORY_WRITES,
            breakdown=(
                f"API txn (order + outbox insert) 1 + relay fenced mark (bulk write + fence)"
                f" 1/{relay_batch:g} + inventory txn (reservation + 2 stock $inc) 1"
            ),
        ),
        OrderCost(
            design="article",
            commits=1 + 1 + 1,
            writes=2 + 1 + _INVENTORY_WRITES,
            breakdown=(
                "API txn 1 + relay update_one per event 1"
                " + inventory txn (reservation + 2 stock $inc) 1"
            ),
        ),
    ]


# The raw transaction the bound starts from is the API's: two inserts, one commit.
RAW_TXN_WRITES: Final = 2


def capacity_bound(raw_txn_per_s: float, cost: OrderCost) -> dict[str, Any]:
    """Orders/s MongoDB could carry if it did nothing but this design's work, from the raw
    transaction rate: once counting commits (each costs what a raw transaction costs) and once
    counting written documents (the raw transaction writes two); the bound is the lower."""
    by_commits = raw_txn_per_s / cost.commits
    by_writes = raw_txn_per_s * RAW_TXN_WRITES / cost.writes
    bound = min(by_commits, by_writes)
    return {
        "design": cost.design,
        "bound_orders_per_s": round(bound, 1),
        "commits_per_order": round(cost.commits, 2),
        "writes_per_order": cost.writes,
        "counted": cost.breakdown,
        "arithmetic": (
            f"min({raw_txn_per_s:.1f} txn/s / {cost.commits:.2f} commits = {by_commits:.1f}, "
            f"{raw_txn_per_s:.1f} txn/s x {RAW_TXN_WRITES} writes / {cost.writes:g} writes"
            f" = {by_writes:.1f}) = {bound:.1f} orders/s"
        ),
    }
