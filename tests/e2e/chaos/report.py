"""The chaos report: one row per scenario, printed at the end of the run and written as Markdown.

Each scenario appends a :class:`ScenarioResult` to :data:`RESULTS` (even when it fails, so the
table shows which guarantee broke); the session hooks in ``conftest.py`` print one line per
scenario and write ``chaos-report.md`` at the repository root (gitignored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPORT_FILE = "chaos-report.md"


@dataclass
class Counts:
    """What a scenario produced, counted over its own orders.

    Duplicates: ``relay_duplicates`` are records the relay published more than once (allowed:
    the consumers absorb them), ``duplicate_reservations`` reservations beyond one per order
    (never allowed), ``duplicate_emails`` emails beyond one per order (allowed only in the
    documented crash window).
    """

    orders_created: int = 0
    # Where the orders ended (invariant 7): confirmed, rejected for lack of stock, cancelled.
    orders_confirmed: int = 0
    orders_rejected: int = 0
    orders_cancelled: int = 0
    requests_failed: int = 0
    events_published: int = 0
    kafka_records: int = 0
    reservations: int = 0
    emails: int = 0
    relay_duplicates: int = 0
    duplicate_reservations: int = 0
    duplicate_emails: int = 0
    dlq_records: int = 0


@dataclass
class ScenarioResult:
    """One row of the report: the counts, the time to settle, and what broke (if anything)."""

    scenario: str
    counts: Counts = field(default_factory=Counts)
    settle_seconds: float | None = None
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        return "FAIL" if self.violations else "PASS"

    @property
    def duplicates(self) -> str:
        c = self.counts
        return f"{c.relay_duplicates}/{c.duplicate_reservations}/{c.duplicate_emails}"

    @property
    def settle(self) -> str:
        return "-" if self.settle_seconds is None else f"{self.settle_seconds:.1f}s"


# Filled by the scenarios in the order they ran; read by the session hooks.
RESULTS: list[ScenarioResult] = []

COLUMNS = (
    "scenario", "orders", "confirmed", "rejected", "cancelled", "failed req", "published",
    "reservations", "emails", "dup relay/resv/email", "DLQ", "settle", "verdict",
)  # fmt: skip


def _cells(r: ScenarioResult) -> list[str]:
    c = r.counts
    return [
        r.scenario,
        str(c.orders_created),
        str(c.orders_confirmed),
        str(c.orders_rejected),
        str(c.orders_cancelled),
        str(c.requests_failed),
        str(c.events_published),
        str(c.reservations),
        str(c.emails),
        r.duplicates,
        str(c.dlq_records),
        r.settle,
        r.verdict,
    ]


def format_line(r: ScenarioResult) -> str:
    """One line for the terminal: ``scenario  orders=.. published=.. ... PASS``."""
    c = r.counts
    return (
        f"{r.scenario:<36} orders={c.orders_created:<4} confirmed={c.orders_confirmed:<4} "
        f"rejected={c.orders_rejected:<4} cancelled={c.orders_cancelled:<4} "
        f"failed={c.requests_failed:<3} "
        f"published={c.events_published:<4} reservations={c.reservations:<4} "
        f"emails={c.emails:<4} dup={r.duplicates:<8} dlq={c.dlq_records:<3} "
        f"settle={r.settle:<6} {r.verdict}"
    )


def render_markdown(results: list[ScenarioResult], *, generated_at: datetime | None = None) -> str:
    """The report as Markdown: a table, then the violations and notes of each scenario."""
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    passed = sum(r.verdict == "PASS" for r in results)
    lines = [
        "# Chaos report",
        "",
        f"Generated {when}: {passed} of {len(results)} scenarios passed.",
        "`dup` counts records the relay published again / reservations beyond one per order / "
        "emails beyond one per order. Settle is the time from the end of the fault (and of the "
        "load) until every invariant held.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in results]
    details = [r for r in results if r.violations or r.notes or r.error]
    if details:
        lines += ["", "## Details", ""]
        for r in details:
            lines.append(f"### {r.scenario}: {r.verdict}")
            if r.error:
                lines.append(f"- error: {r.error}")
            lines += [f"- violation: {v}" for v in r.violations]
            lines += [f"- note: {n}" for n in r.notes]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: list[ScenarioResult], root: Path) -> Path:
    path = root / REPORT_FILE
    path.write_text(render_markdown(results), encoding="utf-8")
    return path
