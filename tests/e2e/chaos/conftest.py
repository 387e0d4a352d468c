"""Fixtures of the failure-injection suite, and the report hooks.

``pipeline`` (per module, from ``tests/e2e/conftest.py``) runs the four services; ``chaos`` (per
test) puts the pipeline back to its defaults, marks where the scenario begins, and after the test
records the scenario's row for the report, even when it failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator

import pytest
import pytest_asyncio

from tests.e2e.chaos.harness import Chaos, Pipeline
from tests.e2e.chaos.report import RESULTS, format_line, write_report


@pytest_asyncio.fixture(loop_scope="session")
async def chaos(pipeline: Pipeline, request: pytest.FixtureRequest) -> AsyncIterator[Chaos]:
    # The scenario's name in the report: the first line of the test's docstring.
    doc = (getattr(request.node, "function", None) or request.node).__doc__ or ""
    name = doc.strip().splitlines()[0].rstrip(".") if doc.strip() else request.node.name
    scenario = Chaos(pipeline, name)
    await pipeline.restore()
    await scenario.begin()
    try:
        yield scenario
    finally:
        outcome = getattr(request.node, "chaos_call_report", None)
        if scenario.evaluation is None:
            failure = "the scenario did not reach its verdict"
            if outcome is not None and outcome.failed:
                failure = outcome.longreprtext.strip().splitlines()[-1][:300]
            scenario.result.error = failure
        RESULTS.append(scenario.result)
        # Whatever the scenario left stopped, killed or misconfigured is repaired before the
        # next test (and before other tiers that share the stack).
        await pipeline.restore()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the call-phase report on the item: the ``chaos`` fixture's teardown reads it."""
    report = yield
    if report.when == "call":
        item.chaos_call_report = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("chaos report")
    for result in RESULTS:
        terminalreporter.write_line(format_line(result))
    path = write_report(RESULTS, terminalreporter.config.rootpath)
    terminalreporter.write_line(f"written to {path}")
