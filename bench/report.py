"""The benchmark's output: ratios, goals, a terminal table and ``bench-results.json``.

Every ratio is computed here from figures of the same run (the ``results`` dictionary the
orchestrator filled), never from a remembered or documented number. A figure that a phase did not
produce is shown as ``n/a`` and its ratio and goal as "not measured".
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Final

from stack.config import SERVICES

# The goals.
GOAL_RELAY_VS_ARTICLE: Final = 20.0
GOAL_RELAY_VS_RAW: Final = 0.5
GOAL_API_VS_RAW: Final = 0.8
GOAL_E2E_P50_MS: Final = 30.0
GOAL_E2E_P99_MS: Final = 150.0
GOAL_SERVICE_RSS_MIB: Final = 150.0


def get(results: dict[str, Any], *path: str) -> Any:
    """``results[a][b]...`` or None when any step is missing."""
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if not isinstance(numerator, int | float) or not isinstance(denominator, int | float):
        return None
    if denominator <= 0 or math.isinf(numerator) or math.isnan(numerator):
        return None
    return round(numerator / denominator, 2)


def compute_ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """The issue's four ratios (plus the email side of the latency one)."""
    return {
        "api_vs_raw_txn": _ratio(
            get(results, "api", "orders_per_s"), get(results, "raw_txn", "txn_per_s")
        ),
        "relay_vs_raw_producer": _ratio(
            get(results, "relay", "events_per_s"), get(results, "raw_producer", "msgs_per_s")
        ),
        "relay_vs_article_relay": _ratio(
            get(results, "relay", "events_per_s"), get(results, "article_relay", "events_per_s")
        ),
        "article_p50_vs_our_p50_reservation": _ratio(
            get(results, "e2e", "article", "reservation", "p50_ms"),
            get(results, "e2e", "ours", "reservation", "p50_ms"),
        ),
        "article_p50_vs_our_p50_email": _ratio(
            get(results, "e2e", "article", "email", "p50_ms"),
            get(results, "e2e", "ours", "email", "p50_ms"),
        ),
        "light_article_p50_vs_our_p50_reservation": _ratio(
            get(results, "e2e", "article_light", "reservation", "p50_ms"),
            get(results, "e2e", "ours_light", "reservation", "p50_ms"),
        ),
        "light_article_p50_vs_our_p50_email": _ratio(
            get(results, "e2e", "article_light", "email", "p50_ms"),
            get(results, "e2e", "ours_light", "email", "p50_ms"),
        ),
    }


def _goal(
    name: str, value: Any, target: float, higher_is_better: bool, unit: str = ""
) -> dict[str, Any]:
    if not isinstance(value, int | float) or math.isnan(value):
        return {"goal": name, "value": None, "target": target, "met": None}
    met = value >= target if higher_is_better else value <= target
    return {"goal": name, "value": value, "target": target, "met": met, "unit": unit}


def evaluate_goals(
    results: dict[str, Any], ratios: dict[str, float | None]
) -> list[dict[str, Any]]:
    """Each goal of the issue with this run's value and whether it is met (None: not measured)."""
    goals = [
        _goal("relay >= 20x article relay", ratios["relay_vs_article_relay"], 20.0, True, "x"),
        _goal("relay >= 0.5x raw producer", ratios["relay_vs_raw_producer"], 0.5, True, "x"),
        _goal("API >= 0.8x raw transaction", ratios["api_vs_raw_txn"], 0.8, True, "x"),
    ]
    for target in ("reservation", "email"):
        p50 = get(results, "e2e", "ours", target, "p50_ms")
        p99 = get(results, "e2e", "ours", target, "p99_ms")
        goals.append(_goal(f"e2e p50 to {target} <= 30 ms", p50, GOAL_E2E_P50_MS, False, "ms"))
        goals.append(_goal(f"e2e p99 to {target} <= 150 ms", p99, GOAL_E2E_P99_MS, False, "ms"))
    memory = get(results, "memory") or {}
    for service in SERVICES:
        peak = get(memory, service, "peak_rss_mib")
        goals.append(
            _goal(f"{service} peak RSS < 150 MiB", peak, GOAL_SERVICE_RSS_MIB, False, "MiB")
        )
    return goals


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (done.stdout + done.stderr).strip()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: cores, memory, CPU model, Python and Java versions."""
    cpu = "unknown"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    java = _run(["java", "-version"]).splitlines()
    return {
        "nproc": _run(["nproc"]),
        "memory": _run(["free", "-h"]),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "java": java[0] if java else "unavailable",
        "kernel": platform.release(),
        # The machine may be shared: the 1/5/15-minute load says how much else was running.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isinf(value):
            return "> timeout"
        if math.isnan(value):
            return "n/a"
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(what, figure, baseline/notes)`` rows of the terminal table and the docs."""
    rows: list[tuple[str, str, str]] = []
    rows.append(
        (
            "raw PyMongo 2-insert txn (c=32)",
            _fmt(get(results, "raw_txn", "txn_per_s"), " txn/s"),
            "limit",
        )
    )
    rows.append(
        ("order API (c=32)", _fmt(get(results, "api", "orders_per_s"), " orders/s"), "this system")
    )
    rows.append(
        (
            "raw aiokafka producer (acks=all, idempotent)",
            _fmt(get(results, "raw_producer", "msgs_per_s"), " msg/s"),
            "limit",
        )
    )
    rows.append(
        (
            "relay drain of backlog",
            _fmt(get(results, "relay", "events_per_s"), " ev/s"),
            "this system",
        )
    )
    rows.append(
        (
            "article relay (500 ms poll, 50/round)",
            _fmt(get(results, "article_relay", "events_per_s"), " ev/s"),
            "article",
        )
    )
    for name in ("relay", "article_relay"):
        latency = get(results, name, "commit_to_publish_p50_ms")
        if latency is not None:
            rows.append((f"{name} commit->publish p50", _fmt(latency, " ms"), ""))
    for name, figure in (get(results, "consumers") or {}).items():
        if isinstance(figure, dict):
            rate = figure.get("msgs_per_s")
            trips = figure.get("redis_round_trips_per_msg")
            rows.append(
                (
                    f"{name} consumer drain",
                    _fmt(rate, " msg/s"),
                    f"redis trips/msg {_fmt(trips, '', 2)}",
                )
            )
    for design in ("ours", "article", "ours_light", "article_light"):
        e2e = get(results, "e2e", design)
        if not isinstance(e2e, dict):
            continue
        load = f"at {_fmt(e2e.get('achieved_rate'), '/s')} ({e2e.get('created')} orders)"
        for target in ("published", "reservation", "email"):
            d = e2e.get(target) or {}
            figure = (
                f"p50 {_fmt(d.get('p50_ms'), '')} / p95 {_fmt(d.get('p95_ms'), '')} / "
                f"p99 {_fmt(d.get('p99_ms'), '')} ms"
            )
            missing = d.get("missing")
            note = load + (f", {missing} missing" if missing else "")
            rows.append((f"e2e {design}: 201 -> {target}", figure, note))
    for name, peak in (get(results, "memory") or {}).items():
        rows.append((f"peak RSS {name}", _fmt(peak.get("peak_rss_mib"), " MiB"), ""))
    return rows


def render_table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) if rows else 0 for i in range(3)]
    lines = [
        f"| {'measure':<{widths[0]}} | {'figure':<{widths[1]}} | {'notes':<{widths[2]}} |",
        f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|{'-' * (widths[2] + 2)}|",
    ]
    lines += [f"| {a:<{widths[0]}} | {b:<{widths[1]}} | {c:<{widths[2]}} |" for a, b, c in rows]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """The whole terminal report: table, ratios, goals, errors of phases that failed."""
    ratios = results["ratios"]
    out = [render_table(table_rows(results)), "", "Ratios (same run):"]
    out += [f"  {name:<38} {_fmt(value, 'x', 2)}" for name, value in ratios.items()]
    out += ["", "Goals:"]
    for goal in results["goals"]:
        status = {True: "MET", False: "NOT MET", None: "not measured"}[goal["met"]]
        value = _fmt(goal["value"], goal.get("unit", ""), 2)
        out.append(f"  [{status:^12}] {goal['goal']:<36} {value}")
    if results.get("errors"):
        out += ["", "Phases that failed (their figures are missing, not guessed):"]
        out += [f"  {phase}: {error}" for phase, error in results["errors"].items()]
    return "\n".join(out)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None if math.isnan(value) else "inf"
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def finish(results: dict[str, Any], json_path: Path) -> str:
    """Add ratios and goals to ``results``, write the JSON file, return the terminal report."""
    results["ratios"] = compute_ratios(results)
    results["goals"] = evaluate_goals(results, results["ratios"])
    json_path.write_text(json.dumps(_json_safe(results), indent=2, default=str) + "\n")
    return render(results)
