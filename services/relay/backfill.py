"""Give a slot to the outbox events that have none (or one outside the slot count).

A producer (the order API, inventory) stores every new event's slot in the transaction that writes
the event. Events written before slots existed have none, and so do events an older producer
instance writes during a rolling upgrade; events whose slot is ``RELAY_SLOTS`` or more were written
with a larger slot count (before a migration that lowered it). No slot owner's scan (``{slot: n,
status: Pending}``) would ever find them, so every relay runs this at start, on every sweep, and at
once when the change stream reports such an insert: it computes the slot (``shared.slots.slot_for``)
and stores it. Then the slot's owner publishes the event as any other.

Why assign on write rather than compute on read: a slot's scan stays one index range, and an
event without a slot costs one update, once. Assigning is safe with any number of relays at
once: it is a pure function of the aggregate id, each update is conditional on the slot the
event had when read, and an event without a slot is published by nobody until it has one
(only as the predecessor of a later version of its aggregate, which lives in the same slot).
"""

from __future__ import annotations

from typing import Any, Final

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from shared.contracts import OutboxStatus
from shared.outbox import OutboxField
from shared.slots import slot_for

# Updates per bulk write: a backlog of old events is assigned in rounds of this size.
ROUND: Final = 1000
# Where an event whose aggregate id cannot be hashed goes (missing, not a string): its owner
# reads it, finds it malformed and marks it Failed with the reason, as before slots.
MALFORMED_SLOT: Final = 0


def slot_of_document(doc: dict[str, Any], slots: int) -> int:
    """The slot an outbox document belongs to among ``slots``."""
    aggregate = doc.get(OutboxField.AGGREGATE_ID)
    if not isinstance(aggregate, str) or not aggregate:
        return MALFORMED_SLOT
    return slot_for(aggregate, slots)


def unslotted_query(slots: int) -> dict[str, Any]:
    """Pending or Failed events without a slot or outside ``0 .. slots-1`` (index-backed:
    ``slot_1_status_1_createdAt_1``; ``slot: null`` also matches a missing field)."""
    f = OutboxField
    statuses = {"$in": [OutboxStatus.PENDING.value, OutboxStatus.FAILED.value]}
    return {
        "$or": [
            {f.SLOT: None, f.STATUS: statuses},
            {f.SLOT: {"$gte": slots}, f.STATUS: statuses},
        ]
    }


async def assign_slots(outbox: AsyncCollection[dict[str, Any]], slots: int) -> set[int]:
    """Store the slot of every Pending or Failed event that lacks a valid one; returns the
    slots that received events (their owners should look at once)."""
    f = OutboxField
    touched: set[int] = set()
    while True:
        docs = (
            await outbox.find(unslotted_query(slots), {f.AGGREGATE_ID: 1, f.SLOT: 1})
            .limit(ROUND)
            .to_list()
        )
        if not docs:
            return touched
        updates = []
        for doc in docs:
            slot = slot_of_document(doc, slots)
            touched.add(slot)
            updates.append(
                UpdateOne(
                    {f.ID: doc[f.ID], f.SLOT: doc.get(f.SLOT)},
                    {"$set": {f.SLOT: slot}},
                )
            )
        await outbox.bulk_write(updates, ordered=False)
        if len(docs) < ROUND:
            return touched


class ReslotRefused(Exception):
    """``reslot`` did nothing: relays are running (the message names them)."""


async def reslot(
    outbox: AsyncCollection[dict[str, Any]], live_relays: list[str], slots: int
) -> int:
    """The migration after a change of ``RELAY_SLOTS``: store every Pending and Failed event's
    slot among ``slots``; returns how many moved. Refused while any relay is live: a relay
    publishing a slot while its events move to another would give them two publishers.
    """
    if live_relays:
        raise ReslotRefused(
            f"{len(live_relays)} relay(s) still running ({', '.join(sorted(live_relays))}): "
            "stop every relay first"
        )
    f = OutboxField
    statuses = [OutboxStatus.PENDING.value, OutboxStatus.FAILED.value]
    moved = 0
    updates: list[UpdateOne] = []
    async for doc in outbox.find({f.STATUS: {"$in": statuses}}, {f.AGGREGATE_ID: 1, f.SLOT: 1}):
        slot = slot_of_document(doc, slots)
        if doc.get(f.SLOT) != slot:
            updates.append(UpdateOne({f.ID: doc[f.ID]}, {"$set": {f.SLOT: slot}}))
        if len(updates) >= ROUND:
            moved += (await outbox.bulk_write(updates, ordered=False)).modified_count
            updates = []
    if updates:
        moved += (await outbox.bulk_write(updates, ordered=False)).modified_count
    return moved
