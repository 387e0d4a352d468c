"""Pure parts of the scaling phases (issue 14): a drain's rates from the events' own publish
stamps, and how the work was shared between relay processes.

No I/O here, so the rules are unit-tested (tests/unit/bench).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

# The steady part of a drain: from the stamp by which this share of the backlog was published
# to the stamp by which that share was. It leaves out the start (imports, leases and the slot
# hand-out between relays that start together) and the tail (fewer slots still have work).
STEADY_FROM: Final = 0.1
STEADY_TO: Final = 0.9


@dataclass(frozen=True)
class DrainRates:
    """Events/s of one drain, from ``(publishedAt, events)`` groups (one per mark)."""

    published: int
    # Between the STEADY_FROM and STEADY_TO stamps: the figure the report compares.
    steady_events_per_s: float | None
    # From the first publish to the last (the first mark's events are the start, not counted).
    publishing_events_per_s: float | None
    # From the command that started the relays to the last publish: start-up included.
    wall_events_per_s: float | None
    first_publish_after_seconds: float | None
    last_publish_after_seconds: float | None


def _rate(events: int, seconds: float) -> float | None:
    return round(events / seconds, 1) if seconds > 0 and events > 0 else None


def drain_rates(
    marks: Iterable[tuple[float, int]],
    started_at: float,
    steady_from: float = STEADY_FROM,
    steady_to: float = STEADY_TO,
) -> DrainRates:
    """Rates of a drain whose relays were started at ``started_at`` (epoch seconds) and marked
    events Published at the given ``(epoch seconds, events)`` stamps (events sharing a stamp
    were marked together). Events count for the time after the stamp before theirs: a window
    from stamp a to stamp b counts the events of the marks after a, up to and with b."""
    ordered = sorted((t, n) for t, n in marks if n > 0)
    total = sum(n for _, n in ordered)
    if not ordered:
        return DrainRates(0, None, None, None, None, None)
    first, last = ordered[0][0], ordered[-1][0]
    cumulative: list[int] = []
    running = 0
    for _, n in ordered:
        running += n
        cumulative.append(running)

    def index_reaching(share: float) -> int:
        wanted = math.ceil(share * total)
        return next(i for i, c in enumerate(cumulative) if c >= wanted)

    a, b = index_reaching(steady_from), index_reaching(steady_to)
    return DrainRates(
        published=total,
        steady_events_per_s=_rate(cumulative[b] - cumulative[a], ordered[b][0] - ordered[a][0]),
        publishing_events_per_s=_rate(total - ordered[0][1], last - first),
        wall_events_per_s=_rate(total, last - started_at),
        first_publish_after_seconds=round(first - started_at, 2),
        last_publish_after_seconds=round(last - started_at, 2),
    )


def metric_value(exposition: str, name: str) -> float | None:
    """The sum of every sample of ``name`` (a counter's ``_total`` or a gauge) in a Prometheus
    text exposition; None when the process does not export it (e.g. ``relay_owned_slots``
    before sharded leadership)."""
    values = [
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    ]
    return float(sum(values)) if values else None


def shares(published_by_relay: Mapping[str, float | None]) -> dict[str, float | None]:
    """Each relay's share of the events published (0..1): 1.0 for one relay and 0 for the rest
    means one leader did all the work, whatever the process count."""
    counted = {k: v for k, v in published_by_relay.items() if v is not None}
    total = sum(counted.values())
    return {
        name: (round(value / total, 3) if total > 0 and value is not None else None)
        for name, value in published_by_relay.items()
    }
