"""Leadership: a lease document in MongoDB (owner, epoch, expiresAt).

Only the holder publishes. The lease alone cannot stop a leader that was paused (GC, SIGSTOP, a
network partition) and wakes up after a standby took over: it still believes it leads until its
next renewal fails. That zombie is fenced in Kafka, not here: all relays share one
``transactional_id``, so the new leader's producer bumps the producer epoch and the broker
rejects the zombie's open and future transactions (see publisher.py and the README's relay section).

The holder considers the lease valid until ``renewal sent + ttl - margin`` on its own monotonic
clock; a standby takes over when ``expiresAt`` (written with the holder's wall clock) has passed
on its clock. Clock skew between hosts can therefore make the two overlap briefly; the Kafka
fence makes that overlap harmless (duplicates at worst, never interleaved batches).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

log = logging.getLogger(__name__)

LEASE_ID = "outbox-relay"
# Stop publishing this long before the lease could expire for others: covers the time the
# renewal took on the wire plus a little clock drift.
SAFETY_MARGIN_FRACTION = 0.2


class Lease:
    def __init__(
        self, collection: AsyncCollection[dict[str, Any]], owner: str, ttl_seconds: float
    ) -> None:
        self._collection = collection
        self.owner = owner
        self._ttl = ttl_seconds
        self.epoch: int | None = None
        self._valid_until = 0.0

    def is_held(self) -> bool:
        """True while this instance may still publish (locally measured, conservative)."""
        return self.epoch is not None and time.monotonic() < self._valid_until

    async def try_acquire(self) -> bool:
        """Renew our lease, or take it over when it is free or expired. True when we hold it.

        Taking over increments ``epoch``; every holder therefore has a distinct epoch.
        """
        if self.epoch is not None and await self.renew():
            return True
        started = time.monotonic()
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=self._ttl)
        doc = await self._collection.find_one_and_update(
            # Expired, or still ours (we stepped down when a renewal was slow, and nobody took
            # it since): taking our own lease back at once avoids a pointless idle TTL.
            {"_id": LEASE_ID, "$or": [{"expiresAt": {"$lt": now}}, {"owner": self.owner}]},
            {
                "$set": {"owner": self.owner, "expiresAt": expires, "acquiredAt": now},
                "$inc": {"epoch": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            try:
                await self._collection.insert_one(
                    {
                        "_id": LEASE_ID,
                        "owner": self.owner,
                        "epoch": 1,
                        "expiresAt": expires,
                        "acquiredAt": now,
                    }
                )
            except DuplicateKeyError:
                return False  # someone holds a live lease
            doc = {"epoch": 1}
        self.epoch = int(doc["epoch"])
        self._valid_until = started + self._ttl * (1 - SAFETY_MARGIN_FRACTION)
        log.info("lease acquired", extra={"component": "lease", "attempt": self.epoch})
        return True

    async def renew(self) -> bool:
        """Extend our lease; False (and no longer held) when someone else has taken it."""
        if self.epoch is None:
            return False
        started = time.monotonic()
        expires = datetime.now(UTC) + timedelta(seconds=self._ttl)
        result = await self._collection.update_one(
            {"_id": LEASE_ID, "owner": self.owner, "epoch": self.epoch},
            {"$set": {"expiresAt": expires}},
        )
        if result.matched_count == 1:
            self._valid_until = started + self._ttl * (1 - SAFETY_MARGIN_FRACTION)
            return True
        log.warning(
            "lease lost to another relay", extra={"component": "lease", "attempt": self.epoch}
        )
        self.epoch = None
        return False

    async def release(self) -> None:
        """Give the lease up at once (clean shutdown), so a standby need not wait for expiry."""
        if self.epoch is None:
            return
        epoch, self.epoch = self.epoch, None
        await self._collection.update_one(
            {"_id": LEASE_ID, "owner": self.owner, "epoch": epoch},
            {"$set": {"expiresAt": datetime.fromtimestamp(0, UTC)}},
        )
        log.info("lease released", extra={"component": "lease", "attempt": epoch})

    def forget(self) -> None:
        """Stop believing we hold the lease (it expired locally or renewals kept failing)."""
        self.epoch = None
