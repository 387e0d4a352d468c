"""Relay membership: one heartbeat document per live relay, so each knows how many share the
slots (``services/relay/share.py``).

A member document (collection ``relay_members``) is ``{_id: instance id, expiresAt, slotCount,
slots, heartbeatAt}``, refreshed every renewal interval with the lease time to live. A relay that
dies stops refreshing it and drops out of everyone's count after the TTL, the same time its slot
leases take to expire (a TTL index removes its document an hour later); a relay that stops
cleanly deletes it at once. ``slotCount`` is the member's ``RELAY_SLOTS``: a relay whose value
is not the prevailing one takes no part in the share (``share.py``), and while any two disagree
nobody re-slots events. ``slots`` (the slots it holds) ranks the members in the share and tells
operators and the console who holds what.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from shared.mongo import ensure_indexes

MEMBERS_COLLECTION: Final = "relay_members"
# A relay that was killed never deletes its document. MongoDB removes it this long after its
# heartbeat expired: long enough for an operator to see which relay died, short enough that
# crashes do not pile up documents for ever.
MEMBER_KEPT_AFTER_EXPIRY_SECONDS: Final = 3600


async def ensure_member_indexes(collection: AsyncCollection[dict[str, Any]]) -> None:
    await ensure_indexes(
        collection,
        [
            IndexModel(
                [("expiresAt", ASCENDING)],
                name="expiresAt_ttl",
                expireAfterSeconds=MEMBER_KEPT_AFTER_EXPIRY_SECONDS,
            )
        ],
    )


@dataclass(frozen=True)
class Member:
    instance: str
    slot_count: int | None
    slots: tuple[int, ...]


class Membership:
    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        instance: str,
        ttl_seconds: float,
        slot_count: int,
    ) -> None:
        self._collection = collection
        self.instance = instance
        self._ttl = ttl_seconds
        self.slot_count = slot_count

    async def heartbeat(self, held: Collection[int]) -> None:
        """Say we are alive (for one more TTL) and which slots we hold."""
        now = datetime.now(UTC)
        await self._collection.update_one(
            {"_id": self.instance},
            {
                "$set": {
                    "expiresAt": now + timedelta(seconds=self._ttl),
                    "heartbeatAt": now,
                    "slotCount": self.slot_count,
                    "slots": sorted(held),
                }
            },
            upsert=True,
        )

    async def live(self) -> list[Member]:
        """The members whose heartbeat has not expired (by our clock), ourselves included once
        we have sent a heartbeat."""
        return await live_members(self._collection)

    async def leave(self) -> None:
        """Clean stop: drop out of the count at once, so the others take our share now."""
        await self._collection.delete_one({"_id": self.instance})


async def live_members(collection: AsyncCollection[dict[str, Any]]) -> list[Member]:
    """The relays whose heartbeat in ``collection`` has not expired (by our clock)."""
    found = collection.find({"expiresAt": {"$gt": datetime.now(UTC)}})
    members: list[Member] = []
    async for doc in found:
        count = doc.get("slotCount")
        slots = doc.get("slots")
        members.append(
            Member(
                instance=str(doc["_id"]),
                slot_count=count if isinstance(count, int) else None,
                slots=tuple(s for s in slots if isinstance(s, int))
                if isinstance(slots, list)
                else (),
            )
        )
    return members


def slot_count_votes(members: Iterable[Member]) -> dict[str, tuple[int, int]]:
    """instance -> (its RELAY_SLOTS, how many slots it holds), what ``share.dissenters`` reads.
    A member without a slot count (written by hand, or by an older version) has no vote."""
    return {m.instance: (m.slot_count, len(m.slots)) for m in members if m.slot_count is not None}
