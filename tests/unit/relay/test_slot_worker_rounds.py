"""Which kind of round a slot's loop runs next (services/relay/slot_worker.py): stream-fed
rounds for what the change stream delivers, and the sweep as the safety net, at start, on every
interval even under a steady stream, and whenever the stream cannot be trusted. The publisher
is a fake that records the rounds; no servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from bson import ObjectId

from services.relay.metrics import RelayMetrics
from services.relay.settings import RelaySettings
from services.relay.settle import BatchResult
from services.relay.slot_worker import INBOX_BATCHES, SWEEP_JITTER, SlotWorker, sweep_wait
from services.relay.wakeup import WAKE_CHANGE, WAKE_STREAM_OPENED
from tests.waiting import wait_until

SWEEP = "sweep"
STREAM = "stream"


class _Lease:
    slot = 0
    epoch = 1

    def is_held(self) -> bool:
        return True

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        pass

    def forget(self) -> None:
        pass

    async def close(self) -> None:
        pass


class _Publisher:
    def __init__(self, deferred: int = 0) -> None:
        self.rounds: list[str] = []
        self._deferred = deferred

    async def publish_once(self) -> BatchResult:
        self.rounds.append(SWEEP)
        return BatchResult()

    async def publish_streamed(self, documents: Sequence[Mapping[str, Any]]) -> BatchResult:
        self.rounds.append(STREAM)
        count = len(documents)
        return BatchResult(selected=count, published=count, deferred=self._deferred)

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def _worker(publisher: _Publisher, sweep_interval: float) -> AsyncIterator[SlotWorker]:
    settings = RelaySettings(port=0, sweep_interval_seconds=sweep_interval)
    client: Any = {settings.database: {"outbox": None}}
    worker = SlotWorker(settings, client, RelayMetrics(), _Lease(), lambda *_: None)  # type: ignore[arg-type]
    worker.publisher = publisher  # type: ignore[assignment]
    stop = asyncio.Event()
    worker.start(stop)
    try:
        yield worker
    finally:
        stop.set()
        assert worker.task is not None
        await asyncio.wait_for(worker.task, 5)


def _doc() -> dict[str, Any]:
    return {"_id": ObjectId(), "slot": 0}


async def _first_sweep_done(worker: SlotWorker, publisher: _Publisher) -> None:
    await wait_until(lambda: publisher.rounds == [SWEEP] and worker.idle, timeout=5)


async def test_a_delivered_document_gets_a_stream_fed_round_not_a_sweep() -> None:
    publisher = _Publisher()
    async with _worker(publisher, sweep_interval=60) as worker:
        await _first_sweep_done(worker, publisher)  # the first round is a sweep: the backlog
        worker.notify(WAKE_CHANGE, _doc())
        await wait_until(lambda: len(publisher.rounds) == 2 and worker.idle, timeout=5)
        assert publisher.rounds == [SWEEP, STREAM]


async def test_a_wake_without_a_document_is_a_sweep() -> None:
    publisher = _Publisher()
    async with _worker(publisher, sweep_interval=60) as worker:
        await _first_sweep_done(worker, publisher)
        worker.notify(WAKE_STREAM_OPENED)  # the stream (re)opened: it may have missed inserts
        await wait_until(lambda: len(publisher.rounds) == 2 and worker.idle, timeout=5)
        assert publisher.rounds == [SWEEP, SWEEP]


async def test_a_stream_round_that_left_documents_to_the_sweep_is_followed_by_one() -> None:
    publisher = _Publisher(deferred=1)
    async with _worker(publisher, sweep_interval=60) as worker:
        await _first_sweep_done(worker, publisher)
        worker.notify(WAKE_CHANGE, _doc())
        await wait_until(lambda: len(publisher.rounds) == 3 and worker.idle, timeout=5)
        assert publisher.rounds == [SWEEP, STREAM, SWEEP]


async def test_under_a_steady_stream_the_sweep_still_runs_every_interval() -> None:
    publisher = _Publisher()
    async with _worker(publisher, sweep_interval=0.2) as worker:
        await wait_until(lambda: publisher.rounds == [SWEEP], timeout=5)

        async def stream_for(seconds: float) -> None:
            deadline = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < deadline:
                worker.notify(WAKE_CHANGE, _doc())
                await asyncio.sleep(0.005)  # the pace of the inserts, not a synchronisation

        feeder = asyncio.create_task(stream_for(30))
        try:
            await wait_until(lambda: publisher.rounds.count(SWEEP) >= 4, timeout=10)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        assert publisher.rounds.count(STREAM) > publisher.rounds.count(SWEEP)


async def test_a_worker_far_behind_the_stream_leaves_the_overflow_to_a_sweep() -> None:
    settings = RelaySettings(port=0, batch_size=2, sweep_interval_seconds=60)
    client: Any = {settings.database: {"outbox": None}}
    worker = SlotWorker(settings, client, RelayMetrics(), _Lease(), lambda *_: None)  # type: ignore[arg-type]
    for _ in range(INBOX_BATCHES * settings.batch_size + 3):
        worker.notify(WAKE_CHANGE, _doc())
    # Bounded memory: the documents past the bound are dropped, and a sweep reads them instead.
    assert len(worker.inbox) == INBOX_BATCHES * settings.batch_size
    assert worker._sweep_due


def test_idle_slots_sweep_about_every_interval_but_not_in_lockstep() -> None:
    waits = [sweep_wait(5.0) for _ in range(200)]
    assert all(5.0 * (1 - SWEEP_JITTER) <= wait <= 5.0 * (1 + SWEEP_JITTER) for wait in waits)
    # Slots started together drift apart: the waits are spread, not one repeated value.
    assert max(waits) - min(waits) > 5.0 * SWEEP_JITTER
