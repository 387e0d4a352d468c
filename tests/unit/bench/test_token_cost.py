"""The bench's figure for the bearer-token check: CPU per validate call of a token the validator
accepts (a refused token would raise, not be timed), and its rows in the report."""

from __future__ import annotations

from bench import token_cost
from bench.report import table_rows


async def test_the_rs256_figure_times_accepted_tokens_with_the_key_cached() -> None:
    cost = await token_cost.rs256_of_keycloaks_size(calls=20)
    assert cost["algorithm"] == "RS256"
    assert cost["calls"] == 20
    assert cost["cpu_us_per_call"] > 0
    assert cost["wall_us_per_call"] > 0


def test_each_algorithms_cost_is_a_row_of_the_report() -> None:
    results = {
        "token_validation": {
            "ES256": {"algorithm": "ES256", "cpu_us_per_call": 184.3, "calls": 2000},
            "RS256": {"algorithm": "RS256", "cpu_us_per_call": 121.8, "calls": 2000},
        }
    }
    rows = {what: (figure, note) for what, figure, note in table_rows(results)}
    es256 = rows["bearer-token validation, ES256, key cached"]
    assert es256 == ("184.3 µs CPU/request", "the API figures above include it")
    assert rows["bearer-token validation, RS256, key cached"][0] == "121.8 µs CPU/request"


def test_no_figure_no_row() -> None:
    assert not [r for r in table_rows({}) if r[0].startswith("bearer-token")]
