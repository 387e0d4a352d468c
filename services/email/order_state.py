"""What the email service knows about each order's lifecycle, in Redis, so a confirmation is
never sent for an order it already knows as cancelled.

``order.created`` and ``order.cancelled`` are two topics: Kafka may deliver an order's cancel
first, or a replayed creation after its cancel. One key per order
(:func:`shared.contracts.order_state_key`) holds ``confirming`` (a confirmation is being sent,
for at most one handler attempt), ``confirmed`` or ``cancelled`` (kept as long as the dedup
keys, 48 h); each transition is one Lua script, so it is atomic across instances:

* a confirmation may begin unless the order is ``cancelled`` (then it is skipped for good);
* a cancellation may begin unless a confirmation is being sent right now (then it is retried:
  sending the cancellation first and the confirmation after would be the wrong way round). A
  sender that died mid-send holds ``confirming`` for one handler timeout at most.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from redis.asyncio import Redis

from shared.contracts import IDEMPOTENCY_TTL_SECONDS, order_state_key


class OrderState(StrEnum):
    NONE = ""
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


# KEYS[1] state key; ARGV[1] lease seconds. Returns the state before (unchanged if cancelled).
_BEGIN_CONFIRMATION: Final = """
local before = redis.call('GET', KEYS[1])
if before == 'cancelled' then return before end
redis.call('SET', KEYS[1], 'confirming', 'EX', ARGV[1])
return before or ''
"""
# KEYS[1] state key; ARGV[1] retention seconds.
_END_CONFIRMATION: Final = """
if redis.call('GET', KEYS[1]) == 'confirming' then
  redis.call('SET', KEYS[1], 'confirmed', 'EX', ARGV[1])
end
return 1
"""
# KEYS[1] state key; ARGV[1] retention seconds. Returns the state before (unchanged if
# a confirmation is in flight).
_BEGIN_CANCELLATION: Final = """
local before = redis.call('GET', KEYS[1])
if before == 'confirming' then return before end
redis.call('SET', KEYS[1], 'cancelled', 'EX', ARGV[1])
return before or ''
"""


class OrderStates:
    """The per-order state of one service (``service`` names the key space)."""

    def __init__(self, redis: Redis, service: str, *, lease_seconds: int) -> None:
        self._redis = redis
        self._service = service
        self._lease = lease_seconds
        self._begin_confirmation = redis.register_script(_BEGIN_CONFIRMATION)
        self._end_confirmation = redis.register_script(_END_CONFIRMATION)
        self._begin_cancellation = redis.register_script(_BEGIN_CANCELLATION)

    def key(self, order_id: str) -> str:
        return order_state_key(self._service, order_id)

    async def begin_confirmation(self, order_id: str) -> OrderState:
        """Mark a confirmation in flight (for one lease) unless the order is cancelled; returns
        the state before. ``CANCELLED`` means: do not confirm."""
        before = await self._begin_confirmation(keys=[self.key(order_id)], args=[self._lease])
        return OrderState(_text(before))

    async def end_confirmation(self, order_id: str) -> None:
        """The confirmation left: keep that for as long as event ids are remembered."""
        await self._end_confirmation(keys=[self.key(order_id)], args=[IDEMPOTENCY_TTL_SECONDS])

    async def begin_cancellation(self, order_id: str) -> OrderState:
        """Mark the order cancelled unless a confirmation is in flight; returns the state
        before. ``CONFIRMING`` means: nothing changed, try again later."""
        before = await self._begin_cancellation(
            keys=[self.key(order_id)], args=[IDEMPOTENCY_TTL_SECONDS]
        )
        return OrderState(_text(before))

    async def get(self, order_id: str) -> OrderState:
        return OrderState(_text(await self._redis.get(self.key(order_id))))


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
