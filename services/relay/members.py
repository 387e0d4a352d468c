"""Relay membership: one heartbeat document per live relay, so each knows how many share the
slots (``services/relay/share.py``).

A member document (collection ``relay_members``) is ``{_id: instance id, expiresAt, slotCount,
slots, heartbeatAt}``, refreshed every renewal interval with the lease time to live. A relay that
dies stops refreshing it and drops out of everyone's count after the TTL, the same time its slot
leases take to expire (a TTL index removes its document an hour later); a relay that stops
cleanly deletes it at once. ``slotCount`` is the
member's ``RELAY_SLOTS``: relays that disagree on it must not re-slot events (see
:meth:`Membership.live`). ``slots`` (the slots it holds) is for operators and the console.
"""

from __future__ import annotations

from collections.abc import Collection
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
        now = datetime.now(UTC)
        found = self._collection.find({"expiresAt": {"$gt": now}})
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

    async def leave(self) -> None:
        """Clean stop: drop out of the count at once, so the others take our share now."""
        await self._collection.delete_one({"_id": self.instance})
