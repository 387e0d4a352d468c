"""The relay publishing straight from the change stream, killed at its worst instant: after a
stream-fed round's records are in Kafka and before its Published mark (issue 21).

The stream-fed round sends what the stream delivered without reading it again; the mark is what
tells the next holder that it went out. Killed in between, the events are still Pending: the
restarted relay's first sweep sends them again (duplicates are allowed, loss is not), and every
order's events keep their order. The invariants of every scenario check that.
"""

from __future__ import annotations

import pytest

from shared.contracts import EVENT_ORDER_CREATED
from shared.slots import DEFAULT_RELAY_SLOTS
from tests.e2e.chaos.harness import Chaos
from tests.waiting import wait_until

pytestmark = pytest.mark.chaos

# Twice the matrix's rate: the relay is busy with stream-fed rounds when it dies. Higher would
# only outgrow the inventory consumer on two shared cores (see test_scenarios.LOAD_RATE).
LOAD_RATE = 8
# The failpoint exits at the first acknowledged round of either kind; a sweep can win the race for
# an event the stream has not delivered yet. Each attempt starts an idle relay with the failpoint
# and then the load; until a stream-fed round is the one that hits it (usually the first).
ATTEMPTS = 3
STREAM_FED_EXIT = "failpoint after_kafka_ack: exiting before the Published mark of a stream-fed"
SWEEP_EXIT = "failpoint after_kafka_ack: exiting before the Published mark of a sweep"


async def test_relay_killed_after_a_stream_fed_send_before_its_mark(chaos: Chaos) -> None:
    """relay killed after a stream-fed send, before its mark"""
    for attempt in range(1, ATTEMPTS + 1):
        hits_before = chaos.log_of("relay").count(STREAM_FED_EXIT)
        await chaos.stop("relay")
        await chaos.start(
            "relay",
            # One host clock for the order API and the relay: no skew to allow for.
            {"RELAY_FAILPOINT": "after_kafka_ack", "RELAY_CLOCK_SKEW_SECONDS": "0"},
        )
        await _wait_streaming(chaos)
        async with chaos.load(rate=LOAD_RATE) as load:
            await chaos.wait_exited("relay")
            log = chaos.log_of("relay")
            hit = log.count(STREAM_FED_EXIT) > hits_before
            assert hit or SWEEP_EXIT in log, "relay exited, not at the failpoint"
            chaos.note(
                f"attempt {attempt}: exited after a {'stream-fed' if hit else 'sweep'} round's "
                f"send, {load.accepted} orders accepted"
            )
            # Restarted while the orders keep coming: the unmarked round goes out again.
            await chaos.start("relay")
            await load.wait_more_accepted(20 if hit else 5)
        if hit:
            break
        # The next attempt's relay must start with nothing Pending, or its first sweep is what
        # hits the failpoint again: the clean relay publishes what this attempt left first.
        await wait_until(
            lambda: _nothing_pending(chaos), timeout=30, interval=0.2, message="outbox drained"
        )
    else:
        pytest.fail(f"no stream-fed round hit the failpoint in {ATTEMPTS} attempts")
    chaos.recovered()
    evaluation = await chaos.verify()
    # The proof needs the window to have been hit: the unmarked round went out twice.
    assert evaluation.counts.relay_duplicates > 0, "nothing published twice: window missed"


async def _nothing_pending(chaos: Chaos) -> bool:
    return await chaos.pending_events(EVENT_ORDER_CREATED) == 0


async def _wait_streaming(chaos: Chaos) -> None:
    """The relay holds every slot and its change stream is open: the load's events reach it
    through the stream, not through its first sweep."""

    async def streaming() -> bool:
        owned = await chaos.metric("relay", "relay_owned_slots")
        opened = await chaos.metric("relay", 'relay_wakeups_total{source="stream_opened"}')
        return owned == DEFAULT_RELAY_SLOTS and bool(opened)

    await wait_until(streaming, timeout=30, interval=0.2, message="relay holding its slots")
