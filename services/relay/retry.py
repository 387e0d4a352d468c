"""Putting ``Failed`` outbox events back to ``Pending``: one code path for the relay CLI
(``python -m services.relay retry``) and the operator console's Retry buttons.

The reset keeps ``lastError`` for the record and zeroes ``attempts``; the relay holding the
event's slot publishes it on its next sweep, in order with the events of its aggregate that
waited behind them (they are in the same slot). ``slot`` narrows a bulk retry to one slot.
Only an event that is ``Failed`` at the moment of the update changes, so a double click or two
operators at once retry it once.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.asynchronous.collection import AsyncCollection

from shared.contracts import OutboxStatus
from shared.outbox import OutboxField

_F = OutboxField
_RESET = {"$set": {_F.STATUS: OutboxStatus.PENDING.value, _F.ATTEMPTS: 0}}


class RetryRefused(Exception):
    """Nothing was retried; the message says why. ``bad_id``: the id itself is malformed."""

    def __init__(self, message: str, *, bad_id: bool = False) -> None:
        super().__init__(message)
        self.bad_id = bad_id


async def retry_all_failed(outbox: AsyncCollection[dict[str, Any]], slot: int | None = None) -> int:
    """Every Failed event (of ``slot``, if given) back to Pending; returns how many."""
    query: dict[str, Any] = {_F.STATUS: OutboxStatus.FAILED.value}
    if slot is not None:
        query[_F.SLOT] = slot
    result = await outbox.update_many(query, _RESET)
    return result.modified_count


async def retry_event(outbox: AsyncCollection[dict[str, Any]], event_id: str) -> int | None:
    """One Failed event back to Pending, or :class:`RetryRefused` saying why not. Returns the
    event's slot (None: it has none yet; the relays assign it, then its holder publishes it)."""
    try:
        oid = ObjectId(event_id)
    except (InvalidId, TypeError):
        raise RetryRefused(
            f"{event_id!r} is not an event id (expected 24 hex characters)", bad_id=True
        ) from None
    failed = OutboxStatus.FAILED.value
    before = await outbox.find_one_and_update(
        {_F.ID: oid, _F.STATUS: failed}, _RESET, projection={_F.SLOT: 1}
    )
    if before is not None:
        slot = before.get(_F.SLOT)
        return slot if isinstance(slot, int) and not isinstance(slot, bool) else None
    doc = await outbox.find_one({_F.ID: oid}, {_F.STATUS: 1})
    if doc is None:
        raise RetryRefused(f"no outbox event {event_id} in database {outbox.database.name!r}")
    raise RetryRefused(f"event {event_id} is {doc.get(_F.STATUS)}, not {failed}; nothing to retry")
