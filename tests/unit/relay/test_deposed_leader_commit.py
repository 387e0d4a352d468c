"""A leader whose lease lapsed while its batch was in flight (paused past its TTL, a slow link)
aborts that batch's Kafka transaction instead of committing it: the deposed leader publishes
nothing. The producer is a fake here (this checks the sender's decision); the end-to-end
proof is the chaos scenario "relay leader SIGSTOP mid-batch"."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId

from services.relay.lease import Fenced, Lease
from services.relay.outbox_event import OutboxEvent
from services.relay.sender import KafkaSender
from services.relay.settings import RelaySettings


class _LeaseDocs:
    """The lease collection as far as ``Lease.confirm`` reads it: this holder, epoch 1."""

    async def find_one(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"owner": "me", "epoch": 1}


class _Producer:
    """Records the transaction calls; ``on_send`` runs when a record is handed over."""

    def __init__(self, on_send: Any) -> None:
        self.calls: list[str] = []
        self._on_send = on_send

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
        self.calls.append("send")
        self._on_send()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def commit_transaction(self) -> None:
        self.calls.append("commit")

    async def abort_transaction(self) -> None:
        self.calls.append("abort")


def _event() -> OutboxEvent:
    return OutboxEvent.from_doc(
        {
            "_id": ObjectId(),
            "aggregateType": "Order",
            "aggregateId": str(ObjectId()),
            "aggregateVersion": 1,
            "eventType": "OrderCreated",
            "payload": "{}",
            "status": "Pending",
            "attempts": 0,
            "createdAt": datetime.now(UTC),
        }
    )


def _sender(lease: Lease, producer: _Producer) -> KafkaSender:
    settings = RelaySettings(environment="test", transactional_id="outbox-relay")
    return KafkaSender(settings, lease, producer_factory=lambda: producer)


def _held_lease() -> Lease:
    lease = Lease(_LeaseDocs(), "me", ttl_seconds=10)  # type: ignore[arg-type]
    lease.epoch = 1
    lease._valid_until = time.monotonic() + 10
    return lease


async def test_a_lease_that_lapses_during_the_sends_aborts_the_batch_instead_of_committing() -> (
    None
):
    lease = _held_lease()

    def paused_past_the_lease() -> None:
        lease._valid_until = time.monotonic() - 1  # the process woke up after its lease ran out

    producer = _Producer(paused_past_the_lease)
    sender = _sender(lease, producer)
    outcome: list[BaseException | None] = [None]
    with pytest.raises(Fenced, match="lease"):
        await sender.send([_event()], outcome, [False])
    assert "commit" not in producer.calls, producer.calls


async def test_a_lease_still_held_commits_the_batch() -> None:
    lease = _held_lease()
    producer = _Producer(lambda: None)
    outcome: list[BaseException | None] = [None]
    await _sender(lease, producer).send([_event()], outcome, [False])
    assert producer.calls[-1] == "commit"
