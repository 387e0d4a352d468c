"""The publish loop of one slot this relay holds (what the single leader did before slots).

A worker runs while its slot's lease is held: it renews the lease and runs one round at a time,
of one of two kinds:

* a stream-fed round publishes the inserted documents the change stream handed over
  (:meth:`SlotWorker.notify` with a document), without reading them again;
* a sweep reads the slot's Pending events from the collection: at start, about every
  ``sweep_interval`` seconds (jittered, :func:`sweep_wait`) even under a steady stream, at once
  when the stream (re)opened or broke, when events got a slot, after a backlog batch, and
  whenever a stream-fed round left something to it (a document it does not trust, a failed
  send). The sweep is the safety net:
  whatever the stream missed or the stream-fed round declined is still Pending and found there.

Rounds never overlap, so the two kinds never send the same event at once, and each skips what
the other handled (``services/relay/stream_feed.py``). The worker ends when

* the process stops (SIGTERM): the round in flight finishes and is marked, then the lease is
  released so another relay takes the slot at once;
* the relay gives the slot up to a newcomer (:meth:`SlotWorker.release`): likewise, the round in
  flight first, then the release, so the slot never has two publishers;
* the lease is lost (a renewal found another holder, it ran out locally, or a write or Kafka
  said we were fenced): it stops at once and writes nothing more.

``publish_once`` is never cancelled: a round is always finished (or fenced) before the worker
ends, which is what makes a hand-over clean.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from pymongo.errors import PyMongoError

from services.relay.lease import Fenced, Lease
from services.relay.metrics import RelayMetrics
from services.relay.publisher import Publisher
from services.relay.settings import RelaySettings
from services.relay.wakeup import WAKE_CHANGE
from shared.backoff import wait_or_stop
from shared.mongo import MongoClient
from shared.outbox import OUTBOX_COLLECTION

log = logging.getLogger(__name__)

# What a worker is doing, reported to the relay, which logs the process-wide state.
PUBLISHING = "publishing"
KAFKA_UNAVAILABLE = "kafka_unavailable"
MONGO_UNAVAILABLE = "mongo_unavailable"
# Stream documents waiting for the next stream-fed round, in batches: past this many the worker
# is behind the stream, so the rest is left to a sweep (it reads them in index order anyway).
# Two batches of whole documents per slot bound the memory a burst can take.
INBOX_BATCHES = 2
# Each wait for the next sweep is the interval times a random factor in 1 +/- this.
SWEEP_JITTER = 0.2


class SlotWorker:
    def __init__(
        self,
        settings: RelaySettings,
        client: MongoClient,
        metrics: RelayMetrics,
        lease: Lease,
        on_state: Callable[[str, BaseException | None], None],
    ) -> None:
        self.settings = settings
        self.lease = lease
        self.slot = lease.slot
        self.metrics = metrics
        self.publisher = Publisher(
            client[settings.database][OUTBOX_COLLECTION], settings, metrics, lease
        )
        self.wake = asyncio.Event()
        self.wake_reason: str | None = None
        # What the change stream delivered for this slot, for the next stream-fed round.
        self.inbox: deque[Mapping[str, Any]] = deque()
        self._sweep_due = True  # the first round is a sweep: the backlog, whatever the stream
        self._swept_at = 0.0
        self.state = PUBLISHING
        self.idle = False
        self._on_state = on_state
        self._release = asyncio.Event()
        self._lost = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def releasing(self) -> bool:
        return self._release.is_set()

    def start(self, stop: asyncio.Event) -> None:
        self.task = asyncio.create_task(self.run(stop), name=f"relay-slot-{self.slot}")

    def release(self) -> None:
        """Give the slot up after the round in flight (see the module docstring)."""
        self._release.set()

    def notify(self, reason: str, document: Mapping[str, Any] | None = None) -> None:
        """Wake the loop: with the inserted ``document`` for a stream-fed round, without one
        for a sweep (the stream reopened, events got a slot: anything may be waiting)."""
        if document is None or len(self.inbox) >= INBOX_BATCHES * self.settings.batch_size:
            self._sweep_due = True
        else:
            self.inbox.append(document)
        if not self.wake.is_set():
            self.wake_reason = reason
        self.wake.set()

    def _take_streamed(self) -> list[Mapping[str, Any]] | None:
        """The next stream-fed batch, or None when the next round is a sweep."""
        if (
            self._sweep_due
            or not self.inbox
            or time.monotonic() - self._swept_at >= self.settings.sweep_interval_seconds
        ):
            return None
        count = min(len(self.inbox), self.settings.batch_size)
        return [self.inbox.popleft() for _ in range(count)]

    def _report(self, state: str, reason: BaseException | None = None) -> None:
        if state != self.state:
            self.state = state
            self._on_state(state, reason)

    async def run(self, stop: asyncio.Event) -> None:
        ending = asyncio.Event()  # set to end the lease task when the worker ends
        keeper = asyncio.create_task(self._keep_lease(ending), name=f"relay-lease-{self.slot}")
        backoff = self.settings.backoff()
        try:
            while not self._should_end(stop):
                self.wake.clear()
                streamed = self._take_streamed()
                if streamed is None:
                    # Cleared before the read: a request that comes during it asks for another.
                    self._sweep_due = False
                try:
                    if streamed is None:
                        result = await self.publisher.publish_once()
                        self._swept_at = time.monotonic()
                    else:
                        result = await self.publisher.publish_streamed(streamed)
                except Fenced as exc:
                    log.error(
                        "fenced by a newer holder of the slot; stepping down",
                        extra={"slot": self.slot, "reason": str(exc)},
                    )
                    self.lease.forget()
                    break
                except PyMongoError as exc:
                    self._sweep_due = True  # what the round took is still Pending: sweep it
                    self._report(MONGO_UNAVAILABLE, exc)
                    await self._pause(stop, backoff.next_delay())
                    continue
                if streamed is not None and (result.deferred or result.errors):
                    # Whatever this round did not settle (a document it declined, a failed
                    # send) is still Pending: the sweep sends it, in order, from the collection.
                    self._sweep_due = True
                if result.transient is not None:
                    self._sweep_due = True  # the round is retried from the collection
                    self._report(KAFKA_UNAVAILABLE, result.transient)
                    await self._pause(stop, backoff.next_delay())
                    continue
                backoff.reset()
                self._report(PUBLISHING)
                if streamed is None and (
                    result.selected >= self.settings.batch_size and result.published
                ):
                    self._sweep_due = True
                    continue  # a backlog: next batch at once
                if self.inbox or self._sweep_due:
                    continue
                await self._wait_for_work(stop)
                if self.wake.is_set():
                    self.metrics.wakeups.labels(source=self.wake_reason or WAKE_CHANGE).inc()
                elif not self._should_end(stop):
                    self.metrics.wakeups.labels(source="sweep").inc()
                    self._sweep_due = True
        finally:
            ending.set()
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await self.publisher.close()
            # The release is conditional on our owner and epoch: harmless if the slot moved.
            if (stop.is_set() or self._release.is_set()) and self.lease.epoch is not None:
                try:
                    await self.lease.release()
                except PyMongoError as exc:
                    log.warning(
                        "could not release the slot lease; it will expire",
                        extra={"slot": self.slot, "reason": repr(exc)},
                    )
            else:
                self.lease.forget()
            await self.lease.close()

    def _should_end(self, stop: asyncio.Event) -> bool:
        return (
            stop.is_set()
            or self._release.is_set()
            or self._lost.is_set()
            or not self.lease.is_held()
        )

    async def _keep_lease(self, ending: asyncio.Event) -> None:
        while not await wait_or_stop(ending, self.settings.lease_renew_seconds):
            try:
                if not await self.lease.renew():
                    self._lost.set()
                    return
            except PyMongoError as exc:
                # Keep trying until the lease runs out locally; the publish loop checks that.
                log.warning("lease renewal failed", extra={"slot": self.slot, "reason": repr(exc)})
            if not self.lease.is_held():
                log.warning(
                    "lease expired locally; stepping down",
                    extra={"component": "lease", "slot": self.slot},
                )
                self._lost.set()
                return

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        await wait_any((stop, self._lost, self._release), seconds)

    async def _wait_for_work(self, stop: asyncio.Event) -> None:
        self.idle = True  # nothing in flight: only a wake-up or the sweep starts the next round
        try:
            await wait_any(
                (stop, self._lost, self._release, self.wake),
                sweep_wait(self.settings.sweep_interval_seconds),
            )
        finally:
            self.idle = False


def sweep_wait(interval: float) -> float:
    """How long an idle slot waits for its next sweep: ``interval`` give or take a fifth.

    The slots a relay takes at start would otherwise sweep in lockstep, a burst of two queries
    per slot at once every interval, and an order arriving during it waits behind them all.
    """
    return interval * random.uniform(1 - SWEEP_JITTER, 1 + SWEEP_JITTER)


async def wait_any(events: tuple[asyncio.Event, ...], seconds: float) -> None:
    """Until one of ``events`` is set, or ``seconds``."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
