"""Before each end-to-end window the bench waits until the windows before it left nothing in
the pipeline (bench/rest.py): the first full run of issue 21 measured a light window behind the
backlog of the 50%-load window (p50 33.5 s at 5/s). The look at the servers is replaced by a
scripted one; what is tested is when the wait ends and what it reports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.rest import Leftover, wait_for_rest


def _looks(*seen: Leftover) -> Callable[[], Awaitable[Leftover]]:
    remaining = list(seen)

    async def look() -> Leftover:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return look


async def test_the_wait_lasts_until_no_event_is_pending_and_no_record_unread() -> None:
    look = _looks(Leftover(120, 40), Leftover(0, 3), Leftover(0, 0))
    waited = await wait_for_rest(look, within=10, poll=0.01)
    assert waited.left == Leftover(0, 0) and not waited.timed_out


async def test_a_pipeline_that_never_comes_to_rest_ends_the_wait_at_its_deadline() -> None:
    waited = await wait_for_rest(_looks(Leftover(5, 0)), within=0.05, poll=0.01)
    assert waited.timed_out
    assert waited.left == Leftover(5, 0)
    assert 0.05 <= waited.seconds < 5


async def test_a_pipeline_already_at_rest_is_not_waited_for() -> None:
    waited = await wait_for_rest(_looks(Leftover(0, 0)), within=10, poll=5)
    assert waited.seconds < 1 and not waited.timed_out
