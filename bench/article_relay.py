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

Kept on purpose (the design being measured): a 500 ms poll, 50 events per round, one send
awaited at a time, one update per event, no wake-up, no ordering rule beyond ``createdAt``.
Changed so that it can run at all: the topic is this repository's ``topic_for_event_type``
(the article's ``toLowerCase().replace(...)`` yields ``ordercreated``, a topic that does not
exist). The producer is kafkajs' default: ``acks=all``, not idempotent, no transactions.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection

from shared.backoff import wait_or_stop
from shared.contracts import Header, OutboxStatus, topic_for_event_type

POLL_SECONDS = 0.5
ROUND_SIZE = 50
MAX_ATTEMPTS = 5


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
    """``setInterval(relayOutboxEvents, 500)`` until ``stop`` (rounds never overlap here)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        while not stop.is_set():
            await relay_round(outbox, producer)
            if await wait_or_stop(stop, POLL_SECONDS):
                return
    finally:
        await producer.stop()
