"""The relay process: health server, slot leadership, and the publish loops of its slots.

Lifecycle: start the health server, create indexes (retrying while MongoDB is away), then every
renewal interval: heartbeat the membership, compute this relay's fair share of the slots
(``share.py``), give up slots above it (each after its round in flight) and take free ones below
it; each held slot runs its own publish loop (``slot_worker.py``) with its own lease, fence and
Kafka transactional id. A relay whose ``RELAY_SLOTS`` is not the prevailing one (``share.py``)
takes and gives up no slot and is not ready until it is restarted with the right value. One
change stream wakes the loop of an inserted event's slot; events without a slot get one
(``backfill.py``). On SIGTERM every slot's round in flight finishes and
is marked, every slot lease is released and the membership document deleted, so the other
relays take the slots at once, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import PyMongoError

from services.relay.backfill import assign_slots
from services.relay.lease import LEASE_COLLECTION, LEGACY_LEASE_ID, Lease, lease_id
from services.relay.members import (
    MEMBERS_COLLECTION,
    Membership,
    ensure_member_indexes,
    slot_count_votes,
)
from services.relay.metrics import RelayMetrics
from services.relay.publisher import BatchResult
from services.relay.settings import RelaySettings
from services.relay.share import (
    dissenters,
    fair_share,
    prevailing_slot_count,
    to_acquire,
    to_release,
)
from services.relay.slot_worker import (
    KAFKA_UNAVAILABLE,
    MONGO_UNAVAILABLE,
    PUBLISHING,
    SlotWorker,
    wait_any,
)
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
        self.leases = self.db[LEASE_COLLECTION]
        self.metrics = metrics or RelayMetrics()
        self.metrics.slots_configured.set(settings.relay_slots)
        # A member's heartbeat expires one renewal interval before its slot leases would (it is
        # sent every renewal interval too, so at most that much after its last lease renewal):
        # when a dead relay's leases expire, the others already count it out and take its slots
        # on their next round, within the lease TTL plus one renewal interval. At least one and
        # a half renewal intervals, though, so a live relay's membership does not flicker when
        # the TTL is only twice the interval (the takeover then takes half an interval longer).
        renew = settings.lease_renew_seconds
        self.members = Membership(
            self.db[MEMBERS_COLLECTION],
            settings.instance_id,
            max(settings.lease_ttl_seconds - renew, 1.5 * renew),
            settings.relay_slots,
        )
        self.workers: dict[int, SlotWorker] = {}
        self._state = "starting"
        # Set to run the balance round now (a worker ended) and to assign slots now (an insert
        # without a valid slot was seen).
        self._rebalance = asyncio.Event()
        self._backfill_now = asyncio.Event()
        # False while a live relay has another RELAY_SLOTS: nobody re-slots events. The relays
        # whose value is not the prevailing one (``share.py``) also take and give up no slot;
        # ``_refusal`` says why when this relay is one of them (its /readyz reason).
        self._agreed = True
        self._dissent: dict[str, int] = {}
        self._refusal: str | None = None
        self._legacy_logged = False

    # -- what the relay holds ----------------------------------------------------------------
    def owned_slots(self) -> set[int]:
        """The slots this relay holds now (lease held by its local clock)."""
        return {slot for slot, worker in self.workers.items() if worker.lease.is_held()}

    def holds(self, slot: int) -> bool:
        return slot in self.owned_slots()

    def lease_of(self, slot: int) -> Lease | None:
        worker = self.workers.get(slot)
        return worker.lease if worker is not None else None

    @property
    def idle(self) -> bool:
        """Every held slot's loop is waiting: only a wake-up or the sweep starts a round."""
        return bool(self.workers) and all(worker.idle for worker in self.workers.values())

    # -- health -----------------------------------------------------------------------------
    async def ready(self) -> dict[str, bool]:
        try:
            await self.client.admin.command("ping")
            mongo = True
        except PyMongoError:
            mongo = False
        # Not ready while it refuses to act: a relay that publishes nothing must not look fine.
        return {"mongo": mongo, "relay_slots": self._refusal is None}

    def not_ready_reason(self) -> str | None:
        """Why ``ready()`` fails beyond a check's name (its /readyz ``reason``), if known."""
        return self._refusal

    def _set_state(self, state: str, reason: BaseException | None = None) -> None:
        """Log once per state change, never once per retry (no log flood during an outage)."""
        if state == self._state:
            return
        previous, self._state = self._state, state
        extra = {"status": state, "reason": repr(reason) if reason else None}
        if state == PUBLISHING and previous not in ("starting", "standby"):
            log.info("recovered; publishing again", extra=extra)
        elif state != PUBLISHING:
            log.warning(f"relay {state.replace('_', ' ')}", extra=extra)

    def _on_worker_state(self, _state: str, reason: BaseException | None) -> None:
        """The process's state is its slots' worst: one log line per change of that."""
        states = {worker.state for worker in self.workers.values()}
        for state in (MONGO_UNAVAILABLE, KAFKA_UNAVAILABLE, PUBLISHING):
            if state in states:
                self._set_state(state, reason)
                return

    # -- main loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.settings.backoff()
        while not stop.is_set():
            try:
                # The outbox's producer (the order API, inventory) creates the same indexes;
                # whichever starts first, they are one set. A conflicting index is not
                # retried: it raises and the process exits 1.
                await ensure_outbox_indexes(self.outbox, self.settings.outbox_published_ttl_seconds)
                await ensure_member_indexes(self.db[MEMBERS_COLLECTION])
                break
            except PyMongoError as exc:
                self._set_state(MONGO_UNAVAILABLE, exc)
                if await wait_or_stop(stop, backoff.next_delay()):
                    return
        halt = asyncio.Event()  # ends the workers and helpers; set once run() is leaving
        wakeup = Wakeup(
            self.db,
            self._on_insert,
            self.metrics,
            save_interval=self.settings.resume_token_save_seconds,
            backoff=self.settings.backoff(),
        )
        helpers = [
            asyncio.create_task(self._refresh_gauges(halt), name="relay-gauges"),
            asyncio.create_task(self._assign_slots(halt), name="relay-backfill"),
        ]
        try:
            while not stop.is_set():
                try:
                    await self._balance(halt)
                except PyMongoError as exc:
                    self._set_state(MONGO_UNAVAILABLE, exc)
                    await wait_or_stop(stop, backoff.next_delay())
                    continue
                backoff.reset()
                if len(helpers) == 2:
                    # Opened once the first slots are held: its opening wakes their loops.
                    helpers.append(asyncio.create_task(wakeup.run(halt), name="relay-wakeup"))
                await wait_any((stop, self._rebalance), self.settings.lease_renew_seconds)
                self._rebalance.clear()
        finally:
            halt.set()
            # Every worker finishes its round in flight, then releases its slot.
            await asyncio.gather(
                *(w.task for w in self.workers.values() if w.task), return_exceptions=True
            )
            self.workers.clear()
            self.metrics.owned_slots.set(0)
            self.metrics.is_leader.set(0)
            try:
                await self.members.leave()
            except PyMongoError as exc:
                log.warning(
                    "could not leave the membership; it will expire", extra={"reason": repr(exc)}
                )
            # A getMore in flight may need up to its await time.
            _, late = await asyncio.wait(helpers, timeout=2)
            for task in late:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _balance(self, halt: asyncio.Event) -> None:
        """One balance round: heartbeat, fair share, give up and take slots."""
        for slot, worker in list(self.workers.items()):
            if worker.task is not None and worker.task.done():
                del self.workers[slot]
                crash = None if worker.task.cancelled() else worker.task.exception()
                if crash is not None:
                    # A bug, not a fault the loop knows: exit non-zero (after the other slots'
                    # drain) so a supervisor restarts the process, as before slots.
                    raise crash
        await self.members.heartbeat(self.workers)
        live = await self.members.live()
        me = self.settings.instance_id
        counts = slot_count_votes(live)
        counts[me] = (self.settings.relay_slots, len(self.workers))  # ours is never stale
        prevailing = prevailing_slot_count(counts)
        dissent = dissenters(counts)
        self._on_dissent(prevailing, dissent)
        if me in dissent:
            # Another RELAY_SLOTS prevails: take nothing and give up nothing (the others do not
            # count us, so a slot we released could wait for its next taker); keep publishing
            # the slots already held until the operator fixes the value.
            self._publish_ownership()
            return
        held = {m.instance: len(m.slots) for m in live if m.instance not in dissent}
        held[me] = len(self.workers)  # our own count is never stale
        share = fair_share(held, me, self.settings.relay_slots)
        active = [slot for slot, worker in self.workers.items() if not worker.releasing]
        for slot in to_release(active, share):
            log.info(
                "giving the slot up to balance the relays",
                extra={"component": "lease", "slot": slot, "share": share},
            )
            self.workers[slot].release()
        if len(self.workers) < share and not await self._legacy_leader():
            for slot in to_acquire(await self._free_slots(), len(self.workers), share):
                lease = Lease(self.leases, me, self.settings.lease_ttl_seconds, slot)
                if not await lease.try_acquire():
                    await lease.close()
                    continue  # taken by another relay since we looked
                worker = SlotWorker(
                    self.settings, self.client, self.metrics, lease, self._on_worker_state
                )
                self.workers[slot] = worker
                worker.start(halt)
                assert worker.task is not None
                worker.task.add_done_callback(lambda _task: self._rebalance.set())
        self._publish_ownership()

    def _on_dissent(self, prevailing: int, dissent: Mapping[str, int]) -> None:
        """Record who disagrees on RELAY_SLOTS (gauge, readiness), logged once per change."""
        me = self.settings.instance_id
        refusing = me in dissent
        self._agreed = not dissent
        self._refusal = (
            f"RELAY_SLOTS={self.settings.relay_slots} here, but the running relays use "
            f"{prevailing}: taking and giving up no slot until it is changed"
            if refusing
            else None
        )
        self.metrics.slots_disagreement.set(1 if refusing else 0)
        if dissent == self._dissent:
            return
        self._dissent = dict(dissent)
        extra = {"slots": self.settings.relay_slots, "prevailing": prevailing}
        if refusing:
            # Changing RELAY_SLOTS is a migration (docs/operating/scaling.md).
            log.error(f"refusing to act: {self._refusal}", extra=extra)
        elif dissent:
            log.warning(
                "relays with another RELAY_SLOTS are left out of the share; re-slotting nothing "
                "until they are gone",
                extra={**extra, "others": dict(sorted(dissent.items()))},
            )
        else:
            log.info("the relays agree on RELAY_SLOTS again", extra=extra)

    async def _legacy_leader(self) -> bool:
        """A relay of the version before slots still holds its one lease (a rolling upgrade):
        it publishes every event, so taking a slot now would give events two publishers."""
        live = await self.leases.find_one(
            {"_id": LEGACY_LEASE_ID, "expiresAt": {"$gt": datetime.now(UTC)}}, {"owner": 1}
        )
        if live is not None and not self._legacy_logged:
            self._legacy_logged = True
            log.error(
                "a relay of the version before slots still leads; taking no slot until its "
                "lease expires (stop the old relays)",
                extra={"owner": live.get("owner")},
            )
        return live is not None

    async def _free_slots(self) -> list[int]:
        """Slots we do not hold whose lease is missing, expired (by our clock) or ours."""
        slots = self.settings.relay_slots
        candidates = {lease_id(s): s for s in range(slots) if s not in self.workers}
        if not candidates:
            return []
        now = datetime.now(UTC)
        free = dict(candidates)
        async for doc in self.leases.find({"_id": {"$in": list(candidates)}}):
            expires = doc.get("expiresAt")
            if isinstance(expires, datetime) and expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            lapsed = not isinstance(expires, datetime) or expires < now
            if not lapsed and doc.get("owner") != self.settings.instance_id:
                free.pop(str(doc["_id"]), None)
        return sorted(free.values())

    def _publish_ownership(self) -> None:
        owned = len(self.workers)
        self.metrics.owned_slots.set(owned)
        self.metrics.is_leader.set(1 if owned else 0)
        if not owned:
            self._set_state("standby")

    # -- wake-ups and slot assignment ----------------------------------------------------------
    def _on_insert(self, reason: str, document: Mapping[str, Any] | None) -> None:
        """Route a change-stream notification to the worker of the inserted event's slot."""
        if document is None:
            self._backfill_now.set()
            for worker in self.workers.values():
                worker.notify(reason)
            return
        slot = document.get(OutboxField.SLOT)
        if (
            not isinstance(slot, int)
            or isinstance(slot, bool)
            or not 0 <= slot < self.settings.relay_slots
        ):
            self._backfill_now.set()  # its owner is woken once the slot is assigned
            return
        holder = self.workers.get(slot)
        if holder is not None:
            holder.notify(reason, document)  # published from the stream when it may be

    async def _assign_slots(self, halt: asyncio.Event) -> None:
        """Give events without a valid slot theirs (``backfill.py``): at start, every sweep
        interval, and at once when the change stream reports one."""
        while not halt.is_set():
            self._backfill_now.clear()
            if self._agreed:
                try:
                    touched = await assign_slots(self.outbox, self.settings.relay_slots)
                except PyMongoError as exc:
                    if classify(exc) is not FaultKind.TRANSIENT:
                        log.warning("slot assignment failed", extra={"reason": repr(exc)})
                else:
                    for slot in touched:
                        worker = self.workers.get(slot)
                        if worker is not None:
                            worker.notify(WAKE_CHANGE)
            await wait_any((halt, self._backfill_now), self.settings.sweep_interval_seconds)

    async def _refresh_gauges(self, halt: asyncio.Event) -> None:
        """Pending count, Failed count and oldest pending age (in total and per held slot),
        every metrics interval."""
        f = OutboxField
        pending = OutboxStatus.PENDING.value
        while True:
            try:
                total = await self._backlog({f.STATUS: pending})
                self.metrics.backlog.set_total(*total)
                self.metrics.failed.set(
                    await self.outbox.count_documents({f.STATUS: OutboxStatus.FAILED.value})
                )
                per_slot = {}
                for slot in sorted(self.workers):
                    # Nothing Pending at all (an idle outbox, most refreshes at light load): no
                    # slot has a backlog, and two queries per held slot would say only that.
                    per_slot[slot] = (
                        await self._backlog({f.SLOT: slot, f.STATUS: pending})
                        if total[0]
                        else (0.0, 0.0)
                    )
                self.metrics.backlog.set_slots(per_slot)
            except PyMongoError as exc:
                if classify(exc) is not FaultKind.TRANSIENT:
                    log.warning("metrics refresh failed", extra={"reason": repr(exc)})
            if await wait_or_stop(halt, self.settings.metrics_interval_seconds):
                return

    async def _backlog(self, query: dict[str, Any]) -> tuple[float, float]:
        """(count, age of the oldest) of the Pending events ``query`` selects."""
        f = OutboxField
        count = await self.outbox.count_documents(query)
        oldest = await self.outbox.find_one(query, {f.CREATED_AT: 1}, sort=[(f.CREATED_AT, 1)])
        age = 0.0
        if oldest and isinstance(oldest.get(f.CREATED_AT), datetime):
            created = oldest[f.CREATED_AT]
            if created.tzinfo is None:
                created = created.replace(tzinfo=UTC)
            age = (datetime.now(UTC) - created).total_seconds()
        return float(count), max(0.0, age)


def health_server(settings: RelaySettings, relay: Relay) -> HealthServer:
    """The relay's /healthz, /readyz (with why it refuses to act, if it does) and /metrics."""
    return HealthServer(
        settings.host,
        settings.port,
        relay.ready,
        relay.metrics.registry,
        not_ready_reason=relay.not_ready_reason,
    )


async def serve(settings: RelaySettings, stop: asyncio.Event) -> int:
    """Run one relay process until ``stop``; the exit code for ``python -m services.relay``."""
    client = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, "outbox-relay")
    relay = Relay(settings, client)
    health = health_server(settings, relay)
    await health.start()
    log.info(
        "relay started",
        extra={
            "instance": settings.instance_id,
            "address": f"{settings.host}:{health.port}",
            # Which outbox: each database has relays of its own (services/relay/settings.py).
            "database": settings.database,
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
