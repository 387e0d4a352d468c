"""Leadership of one slot: a lease document in MongoDB (owner, epoch, expiresAt).

Every slot (``shared.slots``) has its own lease, ``slot-<n>``, and its own fence document,
``slot-<n>-fence``; which slots a relay tries to hold is decided in ``services/relay/share.py``.
Only the holder publishes the slot.

The lease alone cannot stop a holder that was paused (GC, SIGSTOP, a network partition) and
wakes up after another relay took the slot over: it still believes it leads until its next
renewal fails. Such a zombie is fenced twice:

* in Kafka: every holder of one slot uses the slot's ``transactional_id``
  (``<RELAY_TRANSACTIONAL_ID>-slot-<n>``), so the new holder's producer bumps the producer epoch
  and the broker rejects the zombie's open and future transactions for that slot;
* in MongoDB: every status write a leader makes goes through :meth:`Lease.write_fenced`, a
  transaction conditional on this holder's epoch, so a deposed leader's writes abort (see that
  method for why a read of the lease alone would not be enough).

The holder considers the lease valid until ``renewal sent + ttl - margin`` on its own monotonic
clock; a standby takes over when ``expiresAt`` (written with the holder's wall clock) has passed
on its clock. Clock skew between hosts can therefore make the two overlap briefly; the Kafka
fence makes that overlap harmless (duplicates at worst, never interleaved batches).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from bson import Binary
from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.mongo import run_in_transaction

T = TypeVar("T")

log = logging.getLogger(__name__)

LEASE_COLLECTION = "relay_lease"
# The one lease of the relays before slots (every event, one leader). A live one means an old
# relay is still publishing everything: a sharded relay takes no slot until it has expired.
LEGACY_LEASE_ID = "outbox-relay"


def lease_id(slot: int) -> str:
    """The ``_id`` of slot ``slot``'s lease document (in ``relay_lease``)."""
    return f"slot-{slot}"


def fence_id(slot: int) -> str:
    """The document every status write of slot ``slot`` moves to its epoch (see
    :meth:`Lease.write_fenced`)."""
    return f"slot-{slot}-fence"


def transactional_id_for(base: str, slot: int) -> str:
    """The Kafka transactional id of slot ``slot``: every holder of the slot uses it, so a new
    holder fences the old one in the broker. Empty ``base``: transactions off."""
    return f"{base}-slot-{slot}" if base else ""


# The lease field holding the id of the session of the holder's status transactions.
SESSION_FIELD = "sessionId"
# Stop publishing this long before the lease could expire for others: covers the time the
# renewal took on the wire plus a little clock drift.
SAFETY_MARGIN_FRACTION = 0.2


class Fenced(Exception):
    """This relay is no longer the leader (another relay took the lease or Kafka fenced our
    producer): stop publishing and writing at once."""


class Lease:
    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        owner: str,
        ttl_seconds: float,
        slot: int = 0,
    ) -> None:
        self._collection = collection
        self.owner = owner
        self.slot = slot
        self._id = lease_id(slot)
        self._fence = fence_id(slot)
        self._ttl = ttl_seconds
        self.epoch: int | None = None
        self._valid_until = 0.0
        # The session of this holder's status transactions; its id is in the lease document
        # (see _end_previous_holders_transaction).
        self._session: AsyncClientSession | None = None

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
        if self._session is None:
            self._session = self._collection.database.client.start_session()
        session_id = self._session.session_id
        before = await self._collection.find_one_and_update(
            # Expired, or still ours (we stepped down when a renewal was slow, and nobody took
            # it since): taking our own lease back at once avoids a pointless idle TTL.
            {"_id": self._id, "$or": [{"expiresAt": {"$lt": now}}, {"owner": self.owner}]},
            {
                "$set": {
                    "owner": self.owner,
                    "expiresAt": expires,
                    "acquiredAt": now,
                    SESSION_FIELD: session_id,
                },
                "$inc": {"epoch": 1},
            },
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            try:
                await self._collection.insert_one(
                    {
                        "_id": self._id,
                        "owner": self.owner,
                        "epoch": 1,
                        "expiresAt": expires,
                        "acquiredAt": now,
                        SESSION_FIELD: session_id,
                    }
                )
            except DuplicateKeyError:
                return False  # someone holds a live lease
            doc = {"epoch": 1}
        else:
            doc = {"epoch": int(before.get("epoch") or 0) + 1}
            previous = before.get(SESSION_FIELD)
            if isinstance(previous, Mapping) and previous != session_id:
                await self._end_previous_holders_transaction(previous)
        # The fence document must exist before a fenced write (an upsert inside the transaction
        # could race another leader's into a duplicate key). Read first: a paused old leader's
        # transaction may hold it, and a read never waits for that.
        if await self._collection.find_one({"_id": self._fence}, {"_id": 1}) is None:
            with contextlib.suppress(DuplicateKeyError):
                await self._collection.insert_one({"_id": self._fence, "epoch": 0})
        self.epoch = int(doc["epoch"])
        self._valid_until = started + self._ttl * (1 - SAFETY_MARGIN_FRACTION)
        log.info(
            "lease acquired",
            extra={"component": "lease", "slot": self.slot, "epoch": self.epoch},
        )
        return True

    async def _end_previous_holders_transaction(self, previous: Mapping[str, Any]) -> None:
        """Abort whatever status transaction the previous holder left open on the server.

        A holder SIGKILLed inside :meth:`write_fenced` leaves its transaction open until the
        server reaps it (``transactionLifetimeLimitSeconds``, 60 s by default), holding write
        locks on the events it was marking and on the fence: the new holder's marks would hit
        write conflicts all that time and its batches be published again and again. Every
        holder runs its status transactions in one session whose id it stores in the lease, so
        the next holder ends it at once (``killSessions``). A zombie whose session is killed
        finds its transaction gone and the newer epoch on retry: it writes nothing.
        """
        # The id is a UUID; read back through a client that decodes UUIDs natively it must be
        # turned into BSON binary again (subtype 4) to be sent.
        lsid = {k: Binary.from_uuid(v) if isinstance(v, UUID) else v for k, v in previous.items()}
        try:
            await self._collection.database.client.admin.command({"killSessions": [lsid]})
        except PyMongoError as exc:
            # Best effort: the server still reaps it in time; only latency is at stake.
            log.warning(
                "could not end the previous holder's session",
                extra={"slot": self.slot, "reason": repr(exc)},
            )

    async def close(self) -> None:
        """End this holder's session (after it released or lost the lease)."""
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(PyMongoError):
                await session.end_session()

    async def renew(self) -> bool:
        """Extend our lease; False (and no longer held) when someone else has taken it."""
        if self.epoch is None:
            return False
        started = time.monotonic()
        expires = datetime.now(UTC) + timedelta(seconds=self._ttl)
        result = await self._collection.update_one(
            {"_id": self._id, "owner": self.owner, "epoch": self.epoch},
            {"$set": {"expiresAt": expires}},
        )
        if result.matched_count == 1:
            self._valid_until = started + self._ttl * (1 - SAFETY_MARGIN_FRACTION)
            return True
        log.warning(
            "lease lost to another relay",
            extra={"component": "lease", "slot": self.slot, "epoch": self.epoch},
        )
        self.epoch = None
        return False

    async def release(self) -> None:
        """Give the lease up at once (clean shutdown), so a standby need not wait for expiry."""
        if self.epoch is None:
            return
        epoch, self.epoch = self.epoch, None
        await self._collection.update_one(
            {"_id": self._id, "owner": self.owner, "epoch": epoch},
            {"$set": {"expiresAt": datetime.fromtimestamp(0, UTC)}},
        )
        log.info("lease released", extra={"component": "lease", "slot": self.slot, "epoch": epoch})

    def forget(self) -> None:
        """Stop believing we hold the lease (it expired locally or renewals kept failing)."""
        self.epoch = None

    async def confirm(self) -> None:
        """Raise :class:`Fenced` unless the lease document still names this holder and epoch.

        A plain read: it narrows a window (a deposed leader re-initialising the shared Kafka
        transactional id and fencing the real leader), it does not close one. Writes are
        protected by :meth:`write_fenced`.
        """
        epoch = self.epoch
        if epoch is None:
            raise Fenced("the lease is not held")
        doc = await self._collection.find_one({"_id": self._id}, {"owner": 1, "epoch": 1})
        if doc is None or doc.get("owner") != self.owner or doc.get("epoch") != epoch:
            self.epoch = None
            raise Fenced(f"lease epoch {epoch} is no longer current: {doc}")

    async def write_fenced(self, work: Callable[[AsyncClientSession, int], Awaitable[T]]) -> T:
        """Run ``work(session, epoch)`` (writes through ``session`` only) only while this holder's
        epoch is current; otherwise nothing of it is written and :class:`Fenced` is raised.

        One transaction that (1) reads the lease and refuses unless it still names this holder
        and epoch, (2) runs ``work``, (3) moves the fence document to this epoch, refusing if a
        newer epoch already wrote there. Why both:

        * The read alone is not enough: MongoDB transactions detect write-write conflicts only,
          so a transaction that read the lease at its snapshot could still commit after a new
          leader started writing (write skew). The fence document is written by every leader's
          every status write, so two leaders' writes always conflict: whichever comes second
          retries from a fresh snapshot (WriteConflict is a TransientTransactionError) or waits,
          and a deposed leader's retry then finds a newer epoch and aborts.
        * The fence is a document of its own, not the lease: a takeover never waits for the old
          leader's transaction. If the old leader is paused inside one (a few milliseconds
          between its fence write and its commit), only the new leader's first status write
          waits, until the old one resumes or the server aborts its transaction
          (``transactionLifetimeLimitSeconds``); meanwhile nothing is lost, a batch may be
          published twice.

        So whatever a deposed leader commits comes from a transaction whose snapshot preceded
        the takeover; after the takeover it writes nothing.
        """
        epoch = self.epoch
        if epoch is None:
            raise Fenced("the lease is not held")

        async def fenced(session: AsyncClientSession) -> T:
            lease = await self._collection.find_one({"_id": self._id}, session=session)
            if lease is None or lease.get("owner") != self.owner or lease.get("epoch") != epoch:
                raise Fenced(f"lease epoch {epoch} is no longer current; write aborted")
            result = await work(session, epoch)
            touched = await self._collection.update_one(
                {"_id": self._fence, "epoch": {"$lte": epoch}},
                {"$set": {"epoch": epoch, "writtenAt": datetime.now(UTC)}},
                session=session,
            )
            if touched.matched_count != 1:
                raise Fenced(f"a leader newer than epoch {epoch} has written; write aborted")
            return result

        try:
            return await run_in_transaction(
                self._collection.database.client, fenced, session=self._session
            )
        except Fenced:
            self.epoch = None
            raise
