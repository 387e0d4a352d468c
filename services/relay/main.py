"""The relay process: health server, leader election, and the publish loop of the leader.

Lifecycle: start the health server, create indexes (retrying while MongoDB is away), then loop:
try to take the lease; as standby, try again every renewal interval; as leader, run the change
stream and publish batches until SIGTERM or the lease is lost. On SIGTERM the batch in flight
finishes and is marked (publish_once is never cancelled), the lease is released so a standby
takes over at once, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from pymongo.errors import PyMongoError

from services.relay.lease import LEASE_COLLECTION, Fenced, Lease
from services.relay.metrics import RelayMetrics
from services.relay.publisher import BatchResult, Publisher
from services.relay.settings import RelaySettings
from services.relay.wakeup import WAKE_CHANGE, Wakeup
from shared.backoff import wait_or_stop
from shared.contracts import OutboxStatus
from shared.errors import FaultKind, classify
from shared.health import HealthServer
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION, OutboxField, ensure_outbox_indexes

log = logging.getLogger(__name__)


class Relay:
    """One relay instance; ``run(stop)`` returns when ``stop`` is set and the drain is done."""

    def __init__(
        self, settings: RelaySettings, client: MongoClient, metrics: RelayMetrics | None = None
    ) -> None:
        self.settings = settings
        self.client = client
        self.db = client[settings.database]
        self.outbox = self.db[OUTBOX_COLLECTION]
        self.metrics = metrics or RelayMetrics()
        self.lease = Lease(
            self.db[LEASE_COLLECTION], settings.instance_id, settings.lease_ttl_seconds
        )
        self._state = "starting"
        self.idle = False

    # -- health -----------------------------------------------------------------------------
    async def ready(self) -> dict[str, bool]:
        try:
            await self.client.admin.command("ping")
            mongo = True
        except PyMongoError:
            mongo = False
        return {"mongo": mongo}

    def _set_state(self, state: str, reason: BaseException | None = None) -> None:
        """Log once per state change, never once per retry (no log flood during an outage)."""
        if state == self._state:
            return
        previous, self._state = self._state, state
        extra = {"status": state, "reason": repr(reason) if reason else None}
        if state == "publishing" and previous not in ("starting", "standby"):
            log.info("recovered; publishing again", extra=extra)
        elif state != "publishing":
            log.warning(f"relay {state.replace('_', ' ')}", extra=extra)

    # -- main loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.settings.backoff()
        while not stop.is_set():
            try:
                # The order API creates the same indexes; whichever starts first, they are one
                # set. A conflicting index is not retried: it raises and the process exits 1.
                await ensure_outbox_indexes(self.outbox, self.settings.outbox_published_ttl_seconds)
                break
            except PyMongoError as exc:
                self._set_state("mongo_unavailable", exc)
                if await wait_or_stop(stop, backoff.next_delay()):
                    return
        gauges = asyncio.create_task(self._refresh_gauges(stop), name="relay-gauges")
        try:
            while not stop.is_set():
                try:
                    leader = await self.lease.try_acquire()
                except PyMongoError as exc:
                    self._set_state("mongo_unavailable", exc)
                    self.lease.forget()
                    await wait_or_stop(stop, backoff.next_delay())
                    continue
                backoff.reset()
                if not leader:
                    self._set_state("standby")
                    await wait_or_stop(stop, self.settings.lease_renew_seconds)
                    continue
                await self._lead(stop)
        finally:
            gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gauges

    async def _lead(self, stop: asyncio.Event) -> None:
        log.info("became leader", extra={"component": "lease", "epoch": self.lease.epoch})
        self.metrics.is_leader.set(1)
        lost = asyncio.Event()
        leading = asyncio.Event()  # set to end the helper tasks when we stop leading
        wake = asyncio.Event()
        publisher = Publisher(self.outbox, self.settings, self.metrics, self.lease)
        wakeup = Wakeup(
            self.db,
            wake,
            self.metrics,
            save_interval=self.settings.resume_token_save_seconds,
            backoff=self.settings.backoff(),
        )
        tasks = [
            asyncio.create_task(self._keep_lease(lost, leading), name="relay-lease"),
            asyncio.create_task(wakeup.run(leading), name="relay-wakeup"),
        ]
        backoff = self.settings.backoff()
        try:
            while not stop.is_set() and not lost.is_set() and self.lease.is_held():
                wake.clear()
                try:
                    result = await publisher.publish_once()
                except Fenced as exc:
                    log.error("fenced by a newer leader; stepping down", extra={"reason": str(exc)})
                    self.lease.forget()
                    break
                except PyMongoError as exc:
                    self._set_state("mongo_unavailable", exc)
                    await self._pause(stop, lost, backoff.next_delay())
                    continue
                if result.transient is not None:
                    self._set_state("kafka_unavailable", result.transient)
                    await self._pause(stop, lost, backoff.next_delay())
                    continue
                backoff.reset()
                self._set_state("publishing")
                if result.selected >= self.settings.batch_size and result.published:
                    continue  # a backlog: next batch at once
                await self._wait_for_work(stop, lost, wake)
                if wake.is_set():
                    self.metrics.wakeups.labels(source=wakeup.reason or WAKE_CHANGE).inc()
                elif not (stop.is_set() or lost.is_set()):
                    self.metrics.wakeups.labels(source="sweep").inc()
        finally:
            leading.set()
            # Both helpers watch ``leading``; a getMore in flight may need up to its await time.
            _, late = await asyncio.wait(tasks, timeout=2)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await publisher.close()
            self.metrics.is_leader.set(0)
            if stop.is_set():
                try:
                    await self.lease.release()
                except PyMongoError as exc:
                    log.warning(
                        "could not release the lease; it will expire", extra={"reason": repr(exc)}
                    )
            else:
                self.lease.forget()
                self._set_state("standby")

    async def _keep_lease(self, lost: asyncio.Event, leading: asyncio.Event) -> None:
        while not await wait_or_stop(leading, self.settings.lease_renew_seconds):
            try:
                if not await self.lease.renew():
                    lost.set()
                    return
            except PyMongoError as exc:
                # Keep trying until the lease runs out locally; the publish loop checks that.
                log.warning("lease renewal failed", extra={"reason": repr(exc)})
            if not self.lease.is_held():
                log.warning("lease expired locally; stepping down", extra={"component": "lease"})
                lost.set()
                return

    async def _pause(self, stop: asyncio.Event, lost: asyncio.Event, seconds: float) -> None:
        await self._wait_any((stop, lost), seconds)

    async def _wait_for_work(
        self, stop: asyncio.Event, lost: asyncio.Event, wake: asyncio.Event
    ) -> None:
        self.idle = True  # nothing in flight: only a wake-up or the sweep starts the next round
        try:
            await self._wait_any((stop, lost, wake), self.settings.sweep_interval_seconds)
        finally:
            self.idle = False

    @staticmethod
    async def _wait_any(events: tuple[asyncio.Event, ...], seconds: float) -> None:
        waiters = [asyncio.create_task(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _refresh_gauges(self, stop: asyncio.Event) -> None:
        """Pending count, Failed count and oldest pending age, every metrics interval."""
        while True:
            try:
                f = OutboxField
                pending = {f.STATUS: OutboxStatus.PENDING.value}
                self.metrics.pending.set(await self.outbox.count_documents(pending))
                self.metrics.failed.set(
                    await self.outbox.count_documents({f.STATUS: OutboxStatus.FAILED.value})
                )
                oldest = await self.outbox.find_one(
                    pending, {f.CREATED_AT: 1}, sort=[(f.CREATED_AT, 1)]
                )
                age = 0.0
                if oldest and isinstance(oldest.get(f.CREATED_AT), datetime):
                    age = (datetime.now(UTC) - oldest[f.CREATED_AT]).total_seconds()
                self.metrics.oldest_pending_age.set(max(0.0, age))
            except PyMongoError as exc:
                if classify(exc) is not FaultKind.TRANSIENT:
                    log.warning("metrics refresh failed", extra={"reason": repr(exc)})
            if await wait_or_stop(stop, self.settings.metrics_interval_seconds):
                return


async def serve(settings: RelaySettings, stop: asyncio.Event) -> int:
    """Run one relay process until ``stop``; the exit code for ``python -m services.relay``."""
    client = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, "outbox-relay")
    relay = Relay(settings, client)
    health = HealthServer(settings.host, settings.port, relay.ready, relay.metrics.registry)
    await health.start()
    log.info(
        "relay started",
        extra={
            "instance": settings.instance_id,
            "address": f"{settings.host}:{health.port}",
        },
    )
    started = time.monotonic()
    try:
        await relay.run(stop)
    finally:
        await health.stop()
        await client.close()
    log.info("relay stopped", extra={"duration_ms": int((time.monotonic() - started) * 1000)})
    return 0


__all__ = ["BatchResult", "Relay", "serve"]
