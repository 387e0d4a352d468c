"""What the email service knows about each order's lifecycle, in Redis, so a confirmation is
never sent for an order it knows as rejected or cancelled, and no mail is sent again once it is
known to have left.

Email hears an order's outcome on three topics (``inventory.reserved``, ``inventory.rejected``,
``order.cancelled``): Kafka may deliver them in any order, and any of them again (a redelivery,
a DLQ replay). One key per order (:func:`shared.contracts.order_state_key`) holds one value;
each transition is one Lua script or one ``SET``, so it is atomic across instances:

* ``confirming|<claim>`` / ``rejecting|<claim>``: the verdict's mail (confirmation, rejection
  notice) is being sent under that dedup claim; ``confirmed`` / ``rejection_sent``: it left;
* ``cancelled``: the cancellation is known; ``cancellation_sent``: its notice left.

The guarantees:

* a recorded send is never repeated, whatever the dedup key says;
* one verdict mail per order: StockReserved and StockRejected exclude each other by contract,
  and defensively here too, since the first verdict to begin owns the order: once either is in
  flight or recorded, the other kind is never sent;
* no verdict mail once the order is known cancelled: not the confirmation (the customer would
  be told "confirmed" after "cancelled"), and not the rejection notice either (the customer
  asked for the cancellation and was told it happened; "we could not fulfil your order" after
  that contradicts the last word they heard, and the stock question is moot);
* a cancellation may begin unless a verdict mail is being sent right now, i.e. its dedup claim
  is still a live ``processing`` lease (then it is retried: the cancellation first and the
  verdict after would be the wrong way round). A sender that died mid-send stops counting when
  its claim lease expires, so it delays a cancellation by one lease at most.

The key lives :data:`~shared.contracts.ORDER_STATE_TTL_SECONDS` (the DLQ's retention plus a
redelivery window), longer than the 48 h dedup keys: a verdict replayed from the DLQ as late as
the DLQ allows still finds the order cancelled. Redis rather than MongoDB because the
cancellation's check reads the dedup claim in the same atomic script.

The cancellation script reads the claim key named in the state's value, a key it is not given
in ``KEYS``: fine on one Redis server (this project's), not on Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from redis.asyncio import Redis

from shared.contracts import ORDER_STATE_TTL_SECONDS, order_state_key
from shared.idempotency import PROCESSING_PREFIX

# Separates an in-flight marker from the claim key it names (``confirming|idem:email:...``).
_CLAIM_SEPARATOR: Final = "|"


class OrderState(StrEnum):
    NONE = ""
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    REJECTING = "rejecting"
    REJECTION_SENT = "rejection_sent"
    # The cancellation is known; its notice has not been recorded as sent.
    CANCELLED = "cancelled"
    CANCELLATION_SENT = "cancellation_sent"

    @property
    def is_cancelled(self) -> bool:
        return self in (OrderState.CANCELLED, OrderState.CANCELLATION_SENT)

    @property
    def is_in_flight(self) -> bool:
        return self in (OrderState.CONFIRMING, OrderState.REJECTING)


@dataclass(frozen=True)
class Verdict:
    """One verdict's mail: its in-flight marker and its record, and the other verdict's."""

    sending: OrderState
    sent: OrderState
    other_sending: OrderState
    other_sent: OrderState


CONFIRMATION: Final = Verdict(
    OrderState.CONFIRMING, OrderState.CONFIRMED, OrderState.REJECTING, OrderState.REJECTION_SENT
)
REJECTION: Final = Verdict(
    OrderState.REJECTING, OrderState.REJECTION_SENT, OrderState.CONFIRMING, OrderState.CONFIRMED
)

# KEYS[1] state key; ARGV[1] retention seconds, ARGV[2] the mail's claim key, ARGV[3] this
# verdict's in-flight marker, ARGV[4] its record, ARGV[5] the other verdict's marker, ARGV[6]
# its record. Returns the state before (an in-flight marker without its claim). A state that
# forbids the send is kept, and remembered a full retention from this sighting: a replay seen
# now may be replayed again later.
_BEGIN_VERDICT: Final = """
local before = redis.call('GET', KEYS[1])
if before == 'cancelled' or before == 'cancellation_sent' or before == ARGV[4]
    or before == ARGV[6] then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return before
end
if before and string.sub(before, 1, string.len(ARGV[5]) + 1) == ARGV[5] .. '|' then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return ARGV[5]
end
redis.call('SET', KEYS[1], ARGV[3] .. '|' .. ARGV[2], 'EX', ARGV[1])
return before or ''
"""
# KEYS[1] state key; ARGV[1] retention seconds, ARGV[2] the verdict's record. The mail left:
# recorded whatever the state says (even a state lost meanwhile), except a cancellation that
# came after it, which stays.
_END_VERDICT: Final = """
local state = redis.call('GET', KEYS[1])
if state ~= 'cancelled' and state ~= 'cancellation_sent' then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
end
return 1
"""
# KEYS[1] state key; ARGV[1] retention seconds, ARGV[2] the claim's "processing" prefix.
# Returns the state before; the in-flight marker (and nothing changed) while that verdict's
# claim is live, and 'cancellation_sent' (kept, remembered longer) once the notice left.
_BEGIN_CANCELLATION: Final = """
local before = redis.call('GET', KEYS[1])
if before == 'cancellation_sent' then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return before
end
local bar = before and string.find(before, '|', 1, true)
if bar then
  local claim = redis.call('GET', string.sub(before, bar + 1))
  if claim and string.sub(claim, 1, string.len(ARGV[2])) == ARGV[2] then
    return string.sub(before, 1, bar - 1)
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
        self._begin_verdict = redis.register_script(_BEGIN_VERDICT)
        self._end_verdict = redis.register_script(_END_VERDICT)
        self._begin_cancellation = redis.register_script(_BEGIN_CANCELLATION)

    def key(self, order_id: str) -> str:
        return order_state_key(self._service, order_id)

    async def begin_verdict(self, verdict: Verdict, order_id: str, claim_key: str) -> OrderState:
        """Mark the verdict's mail in flight under the dedup claim ``claim_key`` unless the
        order is cancelled or a verdict mail is already in flight or recorded; returns the
        state before. Only ``NONE`` or this verdict's own ``sending`` (a retry, or a sender
        that died) means: send."""
        before = await self._begin_verdict(
            keys=[self.key(order_id)],
            args=[
                ORDER_STATE_TTL_SECONDS,
                claim_key,
                verdict.sending.value,
                verdict.sent.value,
                verdict.other_sending.value,
                verdict.other_sent.value,
            ],
        )
        return _state(before)

    async def end_verdict(self, verdict: Verdict, order_id: str) -> None:
        """Record that the verdict's mail left (the one Redis write after SMTP's 250)."""
        await self._end_verdict(
            keys=[self.key(order_id)], args=[ORDER_STATE_TTL_SECONDS, verdict.sent.value]
        )

    async def begin_confirmation(self, order_id: str, claim_key: str) -> OrderState:
        """:meth:`begin_verdict` for the confirmation (StockReserved)."""
        return await self.begin_verdict(CONFIRMATION, order_id, claim_key)

    async def end_confirmation(self, order_id: str) -> None:
        await self.end_verdict(CONFIRMATION, order_id)

    async def begin_rejection(self, order_id: str, claim_key: str) -> OrderState:
        """:meth:`begin_verdict` for the rejection notice (StockRejected)."""
        return await self.begin_verdict(REJECTION, order_id, claim_key)

    async def end_rejection(self, order_id: str) -> None:
        await self.end_verdict(REJECTION, order_id)

    async def begin_cancellation(self, order_id: str) -> OrderState:
        """Mark the order cancelled unless a verdict mail is in flight; returns the state
        before. ``CONFIRMING`` or ``REJECTING`` means: nothing changed, try again later;
        ``CANCELLATION_SENT``: the notice left already, do not send it."""
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
    # A stored in-flight marker names its claim; callers only need to know what is in flight.
    return OrderState(_text(value).split(_CLAIM_SEPARATOR, 1)[0])


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
