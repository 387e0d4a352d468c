"""Pure figures of the benchmark: percentiles, latency distributions, spread over runs.

No I/O here, so the rules every reported number follows are unit-tested (tests/unit/bench).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

# Below this many samples a p99 is (nearly) the maximum: such percentiles are flagged.
MIN_SAMPLES_FOR_P99: Final = 200


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending list; ``inf`` entries allowed."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Distribution:
    """Latency figures in milliseconds; ``missing`` samples count as infinitely late.

    ``small_sample`` says the p99 rests on fewer than :data:`MIN_SAMPLES_FOR_P99` samples (with
    75 samples, nearest-rank p99 *is* the maximum).
    """

    count: int
    missing: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    small_sample: bool

    @classmethod
    def of(cls, latencies_ms: Sequence[float], missing: int) -> Distribution:
        values = sorted(latencies_ms) + [math.inf] * missing
        return cls(
            count=len(latencies_ms),
            missing=missing,
            p50_ms=round(percentile(values, 50), 1),
            p95_ms=round(percentile(values, 95), 1),
            p99_ms=round(percentile(values, 99), 1),
            max_ms=round(values[-1], 1) if values else math.nan,
            small_sample=len(values) < MIN_SAMPLES_FOR_P99,
        )


def _summary(
    values: Sequence[float | None],
    counts: Callable[[float], bool],
    median: Callable[[list[float]], float],
    digits: int,
) -> dict[str, Any]:
    measured = [float(v) for v in values if v is not None and counts(v)]
    if not measured:
        return {"median": None, "min": None, "max": None, "runs": 0, "failed_runs": len(values)}
    return {
        "median": round(median(measured), digits),
        "min": round(min(measured), digits),
        "max": round(max(measured), digits),
        "runs": len(measured),
        "failed_runs": len(values) - len(measured),
    }


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min and max of repeated runs of one figure (runs without a figure are dropped
    and counted); ``median`` is None when no run produced one."""
    return _summary(values, math.isfinite, statistics.median, 3)


def latency_spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median (the lower one for an even count: a value a run measured), min and max of one
    latency percentile over repeated runs. Unlike :func:`spread` an infinite value (a run with
    orders still missing) counts: it is the slowest run, not a run without a figure; only runs
    that produced nothing (None, NaN) are dropped."""
    return _summary(values, lambda v: not math.isnan(v), statistics.median_low, 1)


def median_run(figures: Sequence[float | None]) -> int | None:
    """Index of the run whose figure is the (lower) median: the run shown in full when several
    were measured; None when no run produced a figure."""
    measured = sorted((v, i) for i, v in enumerate(figures) if v is not None and not math.isnan(v))
    if not measured:
        return None
    return measured[(len(measured) - 1) // 2][1]


def ratio_spread(
    numerators: Sequence[float | None], denominators: Sequence[float | None]
) -> dict[str, Any]:
    """Ratios computed run by run (run i's numerator over run i's denominator), then their
    spread: a ratio of medians would pair figures from different runs. Run i has a ratio only
    when both of its figures exist: a run one side lacks (it failed, or was never reached)
    counts as a failed run, it never shifts the pairing of the runs after it."""
    per_run: list[float | None] = []
    for num, den in itertools.zip_longest(numerators, denominators):
        if num is None or den is None or den <= 0:
            per_run.append(None)
        else:
            per_run.append(num / den)
    return {**spread(per_run), "per_run": [None if r is None else round(r, 3) for r in per_run]}


def open_loop_schedule(rate: float, duration: float) -> list[float]:
    """Send offsets (seconds from the start) of an open-loop load: order ``i`` is due at
    ``i / rate`` whatever happened to earlier ones; ``rate * duration`` sends, at least one."""
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be positive (got {rate}, {duration})")
    return [n / rate for n in range(max(1, int(rate * duration)))]


def achieved_rate(send_offsets: Sequence[float], duration: float) -> float:
    """Sends per second counting only those that left within the measured window: a sender
    that fell behind and sent the rest late does not get credit for them."""
    inside = sum(1 for t in send_offsets if t <= duration)
    return round(inside / duration, 1) if duration > 0 else 0.0
