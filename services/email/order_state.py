"""What the email service knows about each order's lifecycle, in Redis, so a confirmation is
never sent for an order it already knows as cancelled, nor sent again once it is known to have
left.

``order.created`` and ``order.cancelled`` are two topics: Kafka may deliver an order's cancel
first, or a replayed creation after its cancel. One key per order
(:func:`shared.contracts.order_state_key`) holds ``confirming|<claim key>`` (a confirmation is
being sent under that dedup claim), ``confirmed`` (it left), ``cancelled`` (the cancellation is
known) or ``cancellation_sent`` (its notice left); each transition is one Lua script or one
``SET``, so it is atomic across instances:

* a recorded send is never repeated, whatever the dedup key says: a confirmation is not sent
  once ``confirmed``, a cancellation notice not once ``cancellation_sent``;
* a confirmation may begin unless the order is cancelled (then it is skipped for good);
* a cancellation may begin unless a confirmation is being sent right now, i.e. its dedup claim
  is still a live ``processing`` lease (then it is retried: sending the cancellation first and
  the confirmation after would be the wrong way round). A sender that died mid-send stops
  counting when its claim lease expires, so it delays a cancellation by one lease at most.

The key lives :data:`~shared.contracts.ORDER_STATE_TTL_SECONDS` (the DLQ's retention plus a
redelivery window), longer than the 48 h dedup keys: a confirmation replayed from the DLQ as
late as the DLQ allows still finds the order cancelled. Redis rather than MongoDB because the
cancellation's check reads the dedup claim in the same atomic script.

The cancellation script reads the claim key named in the state's value, a key it is not given
in ``KEYS``: fine on one Redis server (this project's), not on Redis Cluster.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from redis.asyncio import Redis

from shared.contracts import ORDER_STATE_TTL_SECONDS, order_state_key
from shared.idempotency import PROCESSING_PREFIX

_CONFIRMING: Final = "confirming|"


class OrderState(StrEnum):
    NONE = ""
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    # The cancellation is known; its notice has not been recorded as sent.
    CANCELLED = "cancelled"
    CANCELLATION_SENT = "cancellation_sent"

    @property
    def is_cancelled(self) -> bool:
        return self in (OrderState.CANCELLED, OrderState.CANCELLATION_SENT)


# KEYS[1] state key; ARGV[1] retention seconds, ARGV[2] the confirmation's claim key. Returns
# the state before. A state that forbids the send is kept, and remembered a full retention
# from this sighting: a replay seen now may be replayed again later.
_BEGIN_CONFIRMATION: Final = """
local before = redis.call('GET', KEYS[1])
if before == 'cancelled' or before == 'cancellation_sent' or before == 'confirmed' then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return before
end
redis.call('SET', KEYS[1], 'confirming|' .. ARGV[2], 'EX', ARGV[1])
return before or ''
"""
# KEYS[1] state key; ARGV[1] retention seconds. The mail left: recorded whatever the state says
# (even a state lost meanwhile), except a cancellation that came after it, which stays.
_END_CONFIRMATION: Final = """
local state = redis.call('GET', KEYS[1])
if state ~= 'cancelled' and state ~= 'cancellation_sent' then
  redis.call('SET', KEYS[1], 'confirmed', 'EX', ARGV[1])
end
return 1
"""
# KEYS[1] state key; ARGV[1] retention seconds, ARGV[2] the claim's "processing" prefix.
# Returns the state before; 'confirming' (and nothing changed) while that claim is live, and
# 'cancellation_sent' (kept, remembered longer) once the notice left.
_BEGIN_CANCELLATION: Final = """
local before = redis.call('GET', KEYS[1])
if before == 'cancellation_sent' then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return before
end
if before and string.sub(before, 1, 11) == 'confirming|' then
  local claim = redis.call('GET', string.sub(before, 12))
  if claim and string.sub(claim, 1, string.len(ARGV[2])) == ARGV[2] then
    return 'confirming'
  end
  -- The sender's claim is gone (it died): its marker counts for nothing.
  before = ''
end
redis.call('SET', KEYS[1], 'cancelled', 'EX', ARGV[1])
return before or ''
"""


class OrderStates:
    """The per-order state of one service (``service`` names the key space)."""

    def __init__(self, redis: Redis, service: str) -> None:
        self._redis = redis
        self._service = service
        self._begin_confirmation = redis.register_script(_BEGIN_CONFIRMATION)
        self._end_confirmation = redis.register_script(_END_CONFIRMATION)
        self._begin_cancellation = redis.register_script(_BEGIN_CANCELLATION)

    def key(self, order_id: str) -> str:
        return order_state_key(self._service, order_id)

    async def begin_confirmation(self, order_id: str, claim_key: str) -> OrderState:
        """Mark a confirmation in flight under the dedup claim ``claim_key`` unless the order is
        cancelled or confirmed; returns the state before. ``CANCELLED`` or ``CONFIRMED`` means:
        do not send."""
        before = await self._begin_confirmation(
            keys=[self.key(order_id)], args=[ORDER_STATE_TTL_SECONDS, claim_key]
        )
        return _state(before)

    async def end_confirmation(self, order_id: str) -> None:
        """Record that the confirmation left (the one Redis write after SMTP's 250)."""
        await self._end_confirmation(keys=[self.key(order_id)], args=[ORDER_STATE_TTL_SECONDS])

    async def begin_cancellation(self, order_id: str) -> OrderState:
        """Mark the order cancelled unless a confirmation is in flight; returns the state
        before. ``CONFIRMING`` means: nothing changed, try again later; ``CANCELLATION_SENT``:
        the notice left already, do not send it."""
        before = await self._begin_cancellation(
            keys=[self.key(order_id)], args=[ORDER_STATE_TTL_SECONDS, PROCESSING_PREFIX + b":"]
        )
        return _state(before)

    async def end_cancellation(self, order_id: str) -> None:
        """Record that the cancellation notice left (the one Redis write after SMTP's 250)."""
        await self._redis.set(
            self.key(order_id), OrderState.CANCELLATION_SENT.value, ex=ORDER_STATE_TTL_SECONDS
        )

    async def get(self, order_id: str) -> OrderState:
        return _state(await self._redis.get(self.key(order_id)))


def _state(value: bytes | str | None) -> OrderState:
    text = _text(value)
    # A stored in-flight marker names its claim; callers only need to know it is in flight.
    return OrderState.CONFIRMING if text.startswith(_CONFIRMING) else OrderState(text)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
