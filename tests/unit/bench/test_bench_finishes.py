"""A bench run always finishes: a failed run, phase or clean-up is recorded (phase, run, error)
and left out of the spreads, ratios pair the runs that both exist, and the report and the
results file are always written."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, cast

import pytest

from bench import report
from bench.run import Plan, Run, phase
from bench.stats import ratio_spread
from stack import Stack


class _NoStack:
    """Just enough of a Stack for phases that never touch it."""

    config = None

    def pids(self) -> dict[str, int]:
        return {}


def _run() -> Run:
    return Run(cast(Stack, _NoStack()), Plan.quick(), "unit")


def test_ratios_pair_the_runs_that_both_exist_when_one_figure_has_fewer_runs() -> None:
    # Run 2's relay drain failed after its raw producer figure: three against two.
    figure = ratio_spread([400.0, 450.0], [1000.0, 900.0, 800.0])
    assert figure["per_run"] == [0.4, 0.5, None]
    assert (figure["median"], figure["runs"], figure["failed_runs"]) == (0.45, 2, 1)
    # A run that failed in the middle keeps its place: run 3 is still paired with run 3.
    assert ratio_spread([10.0, None, 30.0], [5.0, 5.0, 10.0])["per_run"] == [2.0, None, 3.0]


async def _order_api_figures(run: Run) -> None:
    run.results["order_api_runs"] = {
        "raw_txn": [{"txn_per_s": 50.0}, {"txn_per_s": 60.0}],
        "api_wrk": [{"orders_per_s": 30.0}, {"orders_per_s": 36.0}],
        "api_httpx": [{"orders_per_s": 20.0}, {"orders_per_s": 24.0}],
    }


async def _relay_fails_in_its_second_run(run: Run) -> None:
    # What the issue's run left behind: run 2's producer figure, then the phase raised.
    run.results["relay_runs"] = {
        "raw_producer": [{"msgs_per_s": 1000.0}, {"msgs_per_s": 900.0}],
        "raw_mongo": [{"events_per_s": 500.0}],
        "relay": [{"events_per_s": 400.0}],
        "article_relay": [{"events_per_s": 90.0}],
    }
    raise TimeoutError("dropDatabase: timed out after 30 s")


async def _consumers_raise_before_any_figure(run: Run) -> None:
    raise RuntimeError("the consumer group never joined")


async def test_a_phase_that_raised_is_recorded_and_the_others_figures_and_the_report_come_out(
    tmp_path: Path,
) -> None:
    run = _run()
    await phase(run, "order_api", lambda: _order_api_figures(run))
    await phase(run, "relay", lambda: _relay_fails_in_its_second_run(run))
    await phase(run, "consumers", lambda: _consumers_raise_before_any_figure(run))
    run.results["phases"] = ["order_api", "relay", "consumers"]
    path = tmp_path / "bench-results.json"

    text = report.finish(run.results, path)

    written = json.loads(path.read_text())
    failures = [(f["phase"], f["run"], f["error"]) for f in written["failures"]]
    assert ("relay", None, "TimeoutError: dropDatabase: timed out after 30 s") in failures
    assert ("consumers", None, "RuntimeError: the consumer group never joined") in failures
    summary = written["summary"]
    assert summary["api_vs_raw_txn"]["per_run"] == [0.6, 0.6]
    assert summary["relay_events_per_s"]["median"] == 400.0
    assert summary["relay_vs_raw_producer"]["per_run"] == [0.4, None]
    assert "relay: TimeoutError: dropDatabase" in text
    # The relay phase produced figures before it failed; the consumers phase none at all.
    assert report.phases_without_figure(written) == ["consumers"]


async def test_a_failed_run_is_recorded_with_its_index_and_the_phase_goes_on() -> None:
    run = _run()
    figures: list[dict[str, Any] | None] = []

    async def body() -> None:
        for index, outcome in enumerate((100.0, None, 300.0)):

            async def one(value: float | None = outcome) -> dict[str, Any]:
                if value is None:
                    raise ConnectionError("server went away")
                return {"events_per_s": value}

            figures.append(await run.attempt("relay", index, one()))

    await phase(run, "relay", body)
    assert figures == [{"events_per_s": 100.0}, None, {"events_per_s": 300.0}]
    assert run.results["failures"] == [
        {"phase": "relay", "run": 1, "step": "relay", "error": "ConnectionError: server went away"}
    ]
    run.results["relay_runs"] = {"relay": figures}
    assert report.summarize(run.results)["relay_events_per_s"]["failed_runs"] == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_clean_up_that_fails_is_recorded_not_raised() -> None:
    run = _run()
    run.phase_name = "relay"
    uri = f"mongodb://127.0.0.1:{_closed_port()}/?directConnection=true"
    await run.drop_database("bench_relay_x", uri=uri, within=0.5)
    (failure,) = run.results["failures"]
    assert (failure["phase"], failure["step"]) == ("relay", "clean-up: drop bench_relay_x")


def test_the_results_file_is_written_even_when_the_summary_cannot_be_computed(
    tmp_path: Path,
) -> None:
    results: dict[str, Any] = {"failures": [], "relay_runs": "not a dict of runs"}
    path = tmp_path / "bench-results.json"
    report.finish(results, path)
    written = json.loads(path.read_text())
    assert [f["phase"] for f in written["failures"]] == ["report"]


@pytest.mark.parametrize(
    ("results", "without"),
    [
        ({"phases": ["capacity"], "capacity": {"ours": {"steps": [{"offered_rate": 10}]}}}, []),
        ({"phases": ["capacity"], "capacity": {"runs": {"ours": [None]}}}, ["capacity"]),
        # A phase this module does not know: a figure unless it failed as a whole.
        ({"phases": ["new_phase"], "failures": []}, []),
        (
            {"phases": ["new_phase"], "failures": [{"phase": "new_phase", "run": None}]},
            ["new_phase"],
        ),
    ],
)
def test_a_phase_without_any_figure_is_named(results: dict[str, Any], without: list[str]) -> None:
    assert report.phases_without_figure(results) == without


def test_runs_that_failed_are_left_out_of_every_summary_and_table() -> None:
    light = {"reservation": {"p50_ms": 20.0, "p99_ms": 30.0}, "achieved_rate": 5.0}
    ramp = {"capacity_orders_per_s": 20.0, "steps": [{"offered_rate": 20.0, "sustained": True}]}
    results: dict[str, Any] = {
        "failures": [],
        "e2e_runs": {"ours": [None, light], "article": [light, None], "ours_light": [None]},
        "e2e": {"ours": light},
        "capacity": {"ours": ramp, "runs": {"ours": [None, ramp], "article": [None, None]}},
        "relays_scaling": {"backlog": 10, "runs": {"1": [None], "2": [None]}},
        "consumer_runs": {"inventory": [None], "email": [None], "article": [None]},
    }
    results["summary"] = report.summarize(results)
    summary = results["summary"]
    assert summary["article_vs_ours_reservation_p50"]["per_run"] == [None, None]
    assert summary["capacity_ours_orders_per_s"]["median"] == 20.0
    assert summary["capacity_ours_orders_per_s"]["failed_runs"] == 1
    results["goals"] = report.evaluate_goals(results)
    assert "capacity ours" in report.render(results)


async def test_a_phase_cut_short_by_sigterm_is_recorded_and_the_run_stops() -> None:
    run = _run()

    async def terminated() -> None:
        raise SystemExit(143)  # what bench/__main__.py's SIGTERM handler raises

    with pytest.raises(SystemExit):
        await phase(run, "capacity", terminated)
    assert run.results["failures"] == [
        {"phase": "capacity", "run": None, "step": None, "error": "SystemExit: 143"}
    ]
    assert "capacity" in run.results["phase_seconds"]
