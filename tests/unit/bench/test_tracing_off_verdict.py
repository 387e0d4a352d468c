"""The tracing-off bench phase's arithmetic: net cost per call, and when a share is measurable."""

from __future__ import annotations

import pytest

from bench.tracing_off import HOOKS, RESOLUTION, net_ns_per_call, time_hooks, verdict


def test_net_cost_subtracts_the_empty_loop_and_never_goes_negative() -> None:
    assert net_ns_per_call(0.3, 0.1, 100_000) == pytest.approx(2000.0)
    assert net_ns_per_call(0.1, 0.12, 100_000) == 0.0  # timer noise, not a negative cost
    with pytest.raises(ValueError, match="calls"):
        net_ns_per_call(0.1, 0.0, 0)


def test_a_share_below_the_drains_own_spread_is_not_measurable() -> None:
    # 1,000 events/s is 1 ms per event; 200 ns is 0.02% of it; the runs differ by 10%.
    judged = verdict(200.0, [950.0, 1000.0, 1050.0])
    assert judged["relay_per_event_us"] == 1000.0
    assert judged["hooks_share"] == pytest.approx(0.0002)
    assert judged["drain_noise"] == pytest.approx(0.1)
    assert judged["measurable"] is False
    assert "not measurable" in judged["text"]


def test_a_share_above_the_spread_is_measurable() -> None:
    # 50 µs of a 1 ms event is 5%, above runs that differ by 2%.
    judged = verdict(50_000.0, [990.0, 1000.0, 1010.0])
    assert judged["measurable"] is True
    assert "MEASURABLE" in judged["text"]


def test_runs_that_agree_by_chance_do_not_make_a_tiny_share_measurable() -> None:
    # Identical runs have no spread: the bench's resolution is the floor.
    judged = verdict(RESOLUTION * 0.5 * 1e6, [1000.0, 1000.0])
    assert judged["drain_noise"] == RESOLUTION
    assert judged["measurable"] is False


def test_one_drain_run_cannot_be_judged() -> None:
    with pytest.raises(ValueError, match="two drain runs"):
        verdict(100.0, [1000.0])


def test_every_hook_is_timed_against_an_empty_call() -> None:
    figures = time_hooks(calls=1000, repeats=2)
    assert set(figures) == set(HOOKS)
    for figure in figures.values():
        assert figure["runs"] == 2 and figure["median"] >= 0.0
