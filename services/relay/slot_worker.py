"""The publish loop of one slot this relay holds (what the single leader did before slots).

A worker runs while its slot's lease is held: it renews the lease, publishes a batch whenever
the change stream or the sweep says there may be work, and ends when

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
from collections.abc import Callable

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

    def notify(self, reason: str) -> None:
        if not self.wake.is_set():
            self.wake_reason = reason
        self.wake.set()

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
                try:
                    result = await self.publisher.publish_once()
                except Fenced as exc:
                    log.error(
                        "fenced by a newer holder of the slot; stepping down",
                        extra={"slot": self.slot, "reason": str(exc)},
                    )
                    self.lease.forget()
                    break
                except PyMongoError as exc:
                    self._report(MONGO_UNAVAILABLE, exc)
                    await self._pause(stop, backoff.next_delay())
                    continue
                if result.transient is not None:
                    self._report(KAFKA_UNAVAILABLE, result.transient)
                    await self._pause(stop, backoff.next_delay())
                    continue
                backoff.reset()
                self._report(PUBLISHING)
                if result.selected >= self.settings.batch_size and result.published:
                    continue  # a backlog: next batch at once
                await self._wait_for_work(stop)
                if self.wake.is_set():
                    self.metrics.wakeups.labels(source=self.wake_reason or WAKE_CHANGE).inc()
                elif not self._should_end(stop):
                    self.metrics.wakeups.labels(source="sweep").inc()
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
                self.settings.sweep_interval_seconds,
            )
        finally:
            self.idle = False


async def wait_any(events: tuple[asyncio.Event, ...], seconds: float) -> None:
    """Until one of ``events`` is set, or ``seconds``."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
