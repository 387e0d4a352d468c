"""The claim/mark protocol that makes an at-least-once Kafka delivery take effect once.

For each event a consumer owns one Redis key, ``idem:{service}:{event_type}:{event_id}``
(:func:`shared.contracts.idempotency_key`), with three states:

* absent: nobody has handled the event (or the 48 h marker expired);
* ``processing:<owner>``: one consumer instance holds a short lease while it does the work;
* ``done``: the work is finished; any later delivery is a duplicate.

``claim`` is one atomic ``SET key processing:<owner> NX GET EX <lease>``: it takes the lease
when the key is absent and otherwise returns what is there, in a single round trip. Two
consumers can never both see "absent" (the article's GET-then-SETEX race). After the side
effect, ``mark_done`` overwrites the lease with ``SETEX key 172800 done``. While the work runs,
``renew`` extends the lease (only our own; :mod:`shared.claim_lease`). If the work fails,
``release`` deletes the lease (only our own) so a retry, here or in another instance after a
rebalance, can claim it again at once. If the process dies while holding a lease, the lease
expires after ``lease_seconds`` and the event is redone by whoever receives it next: the
handler must therefore be safe to redo (inventory: unique ``orderId`` in MongoDB; email: the
one documented duplicate window).

Round trips per message: 2 on the happy path (claim + mark), 1 for a duplicate (claim).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from enum import StrEnum

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from shared.contracts import IDEMPOTENCY_TTL_SECONDS, idempotency_key

DONE = b"done"
PROCESSING_PREFIX = b"processing"


class Claim(StrEnum):
    CLAIMED = "claimed"  # ours: do the work, then mark_done (or release on failure)
    DONE = "done"  # a duplicate: skip it, commit it
    BUSY = "busy"  # another live instance holds the lease: wait and retry (transient)


class IdempotencyStore:
    """Claim, mark and release one service's dedup keys in Redis.

    ``owner`` identifies this process instance (random by default), so a release never deletes
    a lease that expired and was taken by someone else, and a claim we still hold (because a
    release failed while Redis was away) is recognised as ours.
    """

    def __init__(
        self,
        redis: Redis,
        service: str,
        *,
        lease_seconds: int = 30,
        ttl_seconds: int | None = IDEMPOTENCY_TTL_SECONDS,
        owner: str | None = None,
    ) -> None:
        if lease_seconds <= 0 or (ttl_seconds is not None and ttl_seconds <= 0):
            raise ValueError("lease_seconds and ttl_seconds must be positive")
        self._redis = redis
        self.service = service
        self.lease_seconds = lease_seconds
        self.ttl_seconds = ttl_seconds
        self.owner = owner or uuid.uuid4().hex
        self._token = PROCESSING_PREFIX + b":" + self.owner.encode()
        # Redis round trips issued, for the benchmark's "dedup cost per message".
        self.round_trips = 0

    def key(self, event_type: str, event_id: str) -> str:
        return idempotency_key(self.service, event_type, event_id)

    async def claim(self, key: str) -> Claim:
        """Take the processing lease on ``key`` atomically, or report who has it.

        Raises Redis errors unchanged (the caller classifies them as transient).
        """
        self.round_trips += 1
        previous = await self._redis.set(key, self._token, nx=True, ex=self.lease_seconds, get=True)
        if previous is None:
            return Claim.CLAIMED
        if previous == DONE:
            return Claim.DONE
        if previous == self._token:
            # Our own lease survived a failed release (Redis was away): still ours; renew it so
            # the retry gets a full lease.
            self.round_trips += 1
            await self._redis.set(key, self._token, xx=True, ex=self.lease_seconds)
            return Claim.CLAIMED
        return Claim.BUSY

    async def mark_done(self, key: str) -> None:
        """Record the work as finished for ``ttl_seconds`` (48 h; ``None``: for good): later
        deliveries are skipped."""
        self.round_trips += 1
        await self._redis.set(key, DONE, ex=self.ttl_seconds)

    async def renew(self, key: str) -> bool:
        """Extend our lease on ``key`` to a full ``lease_seconds``; False when it is no longer
        ours (expired, taken by another instance, or ``done``), and then nothing is changed."""
        return await self._if_ours(key, lambda pipe: pipe.expire(key, self.lease_seconds))

    async def release(self, key: str) -> bool:
        """Drop our lease after a failed attempt; never touches ``done`` or another's lease.
        True when a lease was deleted."""
        return await self._if_ours(key, lambda pipe: pipe.delete(key))

    async def _if_ours(self, key: str, change: Callable[[Pipeline], object]) -> bool:
        """Apply ``change`` to ``key`` only while it holds our lease: compare-and-set under
        WATCH, so a lease that expired and was re-claimed by another instance between our GET
        and the change is left alone. True when the change was applied."""
        async with self._redis.pipeline(transaction=True) as pipe:
            try:
                self.round_trips += 1
                await pipe.watch(key)
                self.round_trips += 1
                if await pipe.get(key) != self._token:
                    return False  # leaving the block resets the pipeline and drops the WATCH
                pipe.multi()  # type: ignore[no-untyped-call]
                change(pipe)
                self.round_trips += 1
                await pipe.execute()
                return True
            except WatchError:
                return False  # the key changed under us: it is no longer our lease
