"""CPU per completed order: the arithmetic from /proc ticks to milliseconds per order and the
bound it implies (cores x 1000 / total ms orders/s)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bench.cpu import Window, parse_cpu_ticks, per_order, read_cpu_ticks, snapshot, ticks_used
from bench.report import (
    CPU_PER_ORDER_BASELINE_MS,
    CPU_PER_ORDER_BASELINE_SOURCE,
    cpu_vs_baseline_goal,
    summarize,
    table_rows,
)


def test_utime_and_stime_are_read_after_a_command_name_with_spaces_and_parentheses() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    stat = "4242 (python (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 75 3 1 20 0 5 0"
    assert parse_cpu_ticks(stat) == 325


def test_this_process_has_spent_some_cpu_and_a_gone_one_reads_as_none() -> None:
    ticks = read_cpu_ticks(os.getpid())
    assert ticks is not None and ticks >= 0
    assert read_cpu_ticks(2**22 + 1) is None  # above pid_max's default: no such process


def test_each_instance_counts_its_members_ticks_over_the_window_only() -> None:
    before = {"mongo": {10: 1_000, 11: 50}, "relay": {20: 300}}
    after = {"mongo": {10: 1_400, 11: 60}, "relay": {20: 340, 21: 5}, "order": {30: 90}}
    # mongo 400 + 10; relay 40 + a member started in the window (all of its 5); order started
    # in the window; a member that exited (none here) would add nothing.
    assert ticks_used(before, after) == {"mongo": 410, "relay": 45, "order": 90}


def test_cpu_per_order_per_process_in_total_and_the_bound_it_implies() -> None:
    # 100 ticks/s: 600 ticks = 6,000 ms over 200 orders = 30 ms per order in total.
    figure = per_order(
        {"mongo": 300, "kafka": 100, "relay": 100, "bench": 100},
        completed_orders=200,
        seconds=40.0,
        ticks_per_second=100,
        cores=2,
    )
    assert figure["per_order_ms"] == {"bench": 5.0, "kafka": 5.0, "mongo": 15.0, "relay": 5.0}
    assert figure["total_ms_per_order"] == 30.0
    assert figure["stack_ms_per_order"] == 25.0
    # Two cores give 2,000 ms of CPU per second: at 30 ms an order, 66.7 orders/s at most.
    assert figure["bound_orders_per_s"] == pytest.approx(66.7)
    # 6,000 ms used of 40 s x 2 cores = 80,000 ms available.
    assert figure["cpu_share"] == 0.075
    assert figure["cpu_ms"]["mongo"] == 3000.0


def test_a_window_without_a_completed_order_has_no_per_order_figure() -> None:
    figure = per_order(
        {"mongo": 50}, completed_orders=0, seconds=5.0, ticks_per_second=100, cores=2
    )
    assert figure["total_ms_per_order"] is None
    assert figure["bound_orders_per_s"] is None
    assert figure["cpu_ms"] == {"mongo": 500.0}


def test_a_snapshot_reads_every_member_of_a_process_group() -> None:
    taken = snapshot({"me": os.getpgid(0)})
    assert os.getpid() in taken["me"]


def _light_run(total: float, mongo: float) -> dict[str, object]:
    per_order_ms = {"mongo": mongo, "bench": 2.0, "relay": total - mongo - 2.0}
    return {
        "cpu": {
            "total_ms_per_order": total,
            "stack_ms_per_order": total - 2.0,
            "bound_orders_per_s": round(2000 / total, 1),
            "per_order_ms": per_order_ms,
        }
    }


def test_the_light_cpu_figure_is_the_median_of_the_runs_and_judged_against_the_baseline() -> None:
    results = {
        "e2e_runs": {"ours_light": [_light_run(40.0, 20.0), _light_run(20.0, 10.0), None]},
    }
    summary = summarize(results)
    light = summary["cpu_per_order"]["ours_light"]
    assert light["total_ms_per_order"]["median"] == 30.0
    assert light["total_ms_per_order"]["failed_runs"] == 0  # the failed run has no CPU figure
    assert light["per_order_ms"]["mongo"] == 15.0
    goal = cpu_vs_baseline_goal(summary, 50.0)
    assert (goal["value"], goal["met"]) == (0.6, False)
    assert cpu_vs_baseline_goal(summary, 60.0)["met"] is True
    assert cpu_vs_baseline_goal(summary, None)["met"] is None
    rows = [r for r in table_rows({"summary": summary}) if r[0].startswith("CPU per order")]
    assert rows and "mongo 15.0" in rows[0][2]


def test_a_window_counts_the_cpu_spent_between_its_opening_and_its_closing() -> None:
    window = Window(lambda: {"me": os.getpid()})
    window.open()
    spent, deadline = 0, time.monotonic() + 10.0
    # Busy until the kernel has counted two ticks of this process (20 ms at 100 Hz).
    while window.used.get("me", 0) < 2 and time.monotonic() < deadline:
        spent += sum(range(10_000))
        window.close()
    figure = window.per_order(completed_orders=2)
    assert figure["cpu_ms"]["me"] >= 2 * 1000 / os.sysconf("SC_CLK_TCK")
    assert figure["total_ms_per_order"] == figure["per_order_ms"]["me"] > 0
    assert spent > 0


def test_the_recorded_baseline_is_the_committed_runs_light_median() -> None:
    committed = json.loads((Path(__file__).parents[3] / CPU_PER_ORDER_BASELINE_SOURCE).read_text())
    light = committed["summary"]["cpu_per_order"]["ours_light"]["total_ms_per_order"]
    assert (light["median"], light["runs"]) == (CPU_PER_ORDER_BASELINE_MS, 3)
