"""A faithful port of the seed article's outbox relay, for the benchmark's comparison.

The article (Node.js, mongoose, kafkajs), run every 500 ms::

    const pendingEvents = await Outbox.find({ status: 'Pending' }).sort({ createdAt: 1 }).limit(50);
    for (const event of pendingEvents) {
      try {
        await kafkaProducer.send({ topic: ...,
                                   messages: [{ key, value, headers: { idempotencyKey } }] });
        await Outbox.findByIdAndUpdate(event._id, { status: 'Published' });
      } catch (err) {
        await Outbox.findByIdAndUpdate(event._id, {
          $inc: { attempts: 1 }, status: event.attempts >= 5 ? 'Failed' : 'Pending' });
      }
    }

Kept on purpose (the design being measured): a round every 500 ms on a fixed-rate schedule, as
``setInterval`` starts one (a round that overruns is followed by the next at once, never by two
at a time), 50 events per round, one send
awaited at a time, one update per event, no wake-up, no ordering rule beyond ``createdAt``.
Changed so that it can run at all: the topic is this repository's ``topic_for_event_type``
(the article's ``toLowerCase().replace(...)`` yields ``ordercreated``, a topic that does not
exist). The producer is kafkajs' default: ``acks=all``, not idempotent, no transactions. Its
outbox gets only the index its own query needs (:func:`ensure_article_indexes`): ours would cost
it an update of three indexes per event for queries it never makes. Where the article's design
runs behind our order API (which creates our indexes at start-up), :func:`keep_only_article_indexes`
drops the others before the measurement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from shared.backoff import wait_or_stop
from shared.contracts import Header, OutboxStatus, topic_for_event_type
from shared.mongo import ensure_indexes
from shared.outbox import OutboxField

POLL_SECONDS = 0.5
ROUND_SIZE = 50
MAX_ATTEMPTS = 5
# The key pattern of the one index the article's queries use (Pending, oldest first).
ARTICLE_INDEX_KEYS: Final = ((OutboxField.STATUS, ASCENDING), (OutboxField.CREATED_AT, ASCENDING))
# MongoDB's own index on _id, which every collection has and nobody may drop.
ID_INDEX: Final = "_id_"


async def ensure_article_indexes(outbox: AsyncCollection[dict[str, Any]]) -> None:
    """The one index the article's relay queries need: Pending, oldest first (its updates go
    by ``_id``, which MongoDB indexes anyway)."""
    await ensure_indexes(
        outbox, [IndexModel(list(ARTICLE_INDEX_KEYS), name="article_status_createdAt")]
    )


def indexes_the_article_does_not_use(index_information: Mapping[str, Any]) -> list[str]:
    """Names of the indexes in ``index_information`` (``index_information()``'s answer) that
    neither the article's queries nor MongoDB itself (``_id_``) need."""
    return sorted(
        name
        for name, info in index_information.items()
        if name != ID_INDEX and tuple((k, int(d)) for k, d in info["key"]) != ARTICLE_INDEX_KEYS
    )


async def keep_only_article_indexes(outbox: AsyncCollection[dict[str, Any]]) -> list[str]:
    """Give an outbox our order API already indexed the article's indexes only: ensure the
    article's (ours on ``status, createdAt`` counts as it, same keys), drop every other one.
    Returns the names of the indexes left. The API checks its indexes only at start-up, so it
    keeps serving; the ones dropped are not needed by anything the article's design runs."""
    await ensure_article_indexes(outbox)
    for name in indexes_the_article_does_not_use(await outbox.index_information()):
        await outbox.drop_index(name)
    return sorted(await outbox.index_information())


def next_round_due(due: float, now: float, period: float = POLL_SECONDS) -> float:
    """When the round after the one due at ``due`` starts (fixed rate): ``period`` later, or at
    once (``now``) when this round overran its slot; never a second round while one runs."""
    return max(due + period, now)


async def relay_round(outbox: AsyncCollection[dict[str, Any]], producer: AIOKafkaProducer) -> int:
    """One round of ``relayOutboxEvents()``; returns how many events it published."""
    cursor = outbox.find({"status": OutboxStatus.PENDING.value}).sort("createdAt", 1)
    published = 0
    for event in await cursor.limit(ROUND_SIZE).to_list():
        try:
            await producer.send_and_wait(
                topic_for_event_type(event["eventType"]),
                key=str(event["aggregateId"]).encode(),
                value=str(event["payload"]).encode(),
                headers=[(Header.IDEMPOTENCY_KEY, str(event["_id"]).encode())],
            )
            await outbox.update_one(
                {"_id": event["_id"]}, {"$set": {"status": OutboxStatus.PUBLISHED.value}}
            )
            published += 1
        except Exception:
            status = (
                OutboxStatus.FAILED
                if event.get("attempts", 0) >= MAX_ATTEMPTS
                else OutboxStatus.PENDING
            )
            await outbox.update_one(
                {"_id": event["_id"]},
                {"$inc": {"attempts": 1}, "$set": {"status": status.value}},
            )
    return published


async def run(outbox: AsyncCollection[dict[str, Any]], bootstrap: str, stop: asyncio.Event) -> None:
    """``setInterval(relayOutboxEvents, 500)`` until ``stop``: rounds start every 500 ms from
    the first one, whatever each took, and never overlap."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        due = time.monotonic()
        while not stop.is_set():
            await relay_round(outbox, producer)
            now = time.monotonic()
            due = next_round_due(due, now)
            if await wait_or_stop(stop, due - now):
                return
    finally:
        await producer.stop()
