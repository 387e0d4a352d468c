"""CPU time per completed order: where the machine's cores go, per process of the stack.

Linux counts each process's CPU time in clock ticks in ``/proc/<pid>/stat`` (``utime`` and
``stime``, fields 14 and 15, every thread included). Reading it for every process of the run
just before and just after a measured window, and dividing by the orders that window completed,
gives what one order costs each process: MongoDB, the Kafka JVM(s), Redis, each service and the
bench itself (the load generator and its observers). With ``cores`` cores, no design can go
faster than ``cores x 1000 / total ms`` orders/s however its servers are tuned: that is the
bound this figure implies.

The processes are the stack's process groups (bench/memory.py finds their members), so a
launcher and its server, or a JVM's helpers, count as one instance.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from bench.memory import group_members

# Per-order figures are given in milliseconds with this many decimals.
DIGITS: Final = 2
# The instance name of the bench's own process (bench/run.py ``Run.process_pids``).
BENCH_PROCESS: Final = "bench"


def clock_ticks_per_second() -> int:
    """The unit of ``utime``/``stime`` (USER_HZ, 100 on nearly every Linux)."""
    return int(os.sysconf("SC_CLK_TCK"))


def usable_cores() -> int:
    """Cores this process may run on (what the stack shares; not the host's when pinned)."""
    return len(os.sched_getaffinity(0))


def parse_cpu_ticks(stat: str) -> int:
    """``utime + stime`` from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may contain spaces or ')': the fields are
    counted from the last ')'. After it, field 3 (state) is index 0, so utime (14) and stime
    (15) are indexes 11 and 12.
    """
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def read_cpu_ticks(pid: int) -> int | None:
    """CPU ticks of ``pid`` so far; None when the process is gone."""
    try:
        return parse_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return None


# Instance name -> {pid of a member of its group -> CPU ticks}.
Snapshot = dict[str, dict[int, int]]


def snapshot(pids: Mapping[str, int]) -> Snapshot:
    """CPU ticks of every member of each instance's process group, now."""
    taken: Snapshot = {}
    for name, leader in pids.items():
        members = group_members(leader) or [leader]
        ticks = {pid: t for pid in members if (t := read_cpu_ticks(pid)) is not None}
        if ticks:
            taken[name] = ticks
    return taken


def ticks_used(before: Snapshot, after: Snapshot) -> dict[str, int]:
    """Ticks each instance used between two snapshots.

    A process that started in between counts from zero (all its time is in the window); one
    that exited in between took its last ticks with it (nothing to read), so it adds nothing.
    """
    used: dict[str, int] = {}
    for name, members in after.items():
        earlier = before.get(name, {})
        used[name] = sum(max(0, t - earlier.get(pid, 0)) for pid, t in members.items())
    return used


def per_order(
    used_ticks: Mapping[str, int],
    completed_orders: int,
    seconds: float,
    ticks_per_second: int,
    cores: int,
) -> dict[str, Any]:
    """CPU milliseconds per completed order, per instance and in total, and the bound they imply.

    ``bound_orders_per_s`` is ``cores x 1000 / total_ms``: the rate at which these processes
    would need every core's every millisecond. ``cpu_share`` is the share of the cores used over
    the window (``seconds``), whatever its orders. Without a completed order there is no
    per-order figure (None), only the time used.
    """
    ms = {name: ticks * 1000 / ticks_per_second for name, ticks in used_ticks.items()}
    total_ms = sum(ms.values())
    figure: dict[str, Any] = {
        "completed_orders": completed_orders,
        "window_seconds": round(seconds, 2),
        "cores": cores,
        "cpu_ms": {name: round(v, 1) for name, v in sorted(ms.items())},
        "cpu_share": round(total_ms / (seconds * 1000 * cores), 3) if seconds > 0 else None,
        "per_order_ms": None,
        "total_ms_per_order": None,
        # The same without the bench's own process (load generator and observers): the stack's.
        "stack_ms_per_order": None,
        "bound_orders_per_s": None,
    }
    if completed_orders > 0:
        total_per_order = total_ms / completed_orders
        figure["per_order_ms"] = {
            name: round(v / completed_orders, DIGITS) for name, v in sorted(ms.items())
        }
        figure["total_ms_per_order"] = round(total_per_order, DIGITS)
        stack_ms = total_ms - ms.get(BENCH_PROCESS, 0.0)
        figure["stack_ms_per_order"] = round(stack_ms / completed_orders, DIGITS)
        figure["bound_orders_per_s"] = (
            round(cores * 1000 / total_per_order, 1) if total_per_order > 0 else None
        )
    return figure


class Window:
    """CPU of every process of the run over one measured window: :meth:`open` when the first
    order is sent, :meth:`close` when the last one completed (or the settle wait gave up), so
    neither the observers' start-up nor their shutdown is counted."""

    def __init__(self, pids: Callable[[], Mapping[str, int]]) -> None:
        self._pids = pids
        self._before: Snapshot = {}
        self._opened = 0.0
        self.used: dict[str, int] = {}
        self.seconds = 0.0

    def open(self) -> None:
        self._before = snapshot(self._pids())
        self._opened = time.monotonic()

    def close(self) -> None:
        self.seconds = time.monotonic() - self._opened
        self.used = ticks_used(self._before, snapshot(self._pids()))

    def per_order(self, completed_orders: int) -> dict[str, Any]:
        return per_order(
            self.used, completed_orders, self.seconds, clock_ticks_per_second(), usable_cores()
        )
