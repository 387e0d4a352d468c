"""Run one side effect while holding its dedup claim (:mod:`shared.idempotency`).

A claim is a lease of ``lease_seconds``; a handler that outlives it (slow SMTP: aiosmtplib's
timeout is per command, not per message) would let another instance claim the same event after
a rebalance and do the work a second time. So while the handler runs:

* the lease is renewed every third of its length (compare-and-expire: only our own lease);
* the handler is cancelled at once if a renewal finds the lease gone or someone else's, and
  when no renewal has succeeded for two thirds of the lease (Redis away): its deadline never
  passes the end of the lease last confirmed, minus a third of it for the release;
* the whole handler is bounded by ``timeout_seconds`` however the renewals go.

Either cut is a :class:`~shared.errors.TransientFault` or ``TimeoutError``: retried with backoff
(and the retry's claim tells whether someone else now owns the event), never the DLQ.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from shared.errors import TransientFault
from shared.idempotency import IdempotencyStore

log = logging.getLogger(__name__)

T = TypeVar("T")

# A cancelled handler gets this long to unwind before it is left behind.
_CANCEL_GRACE_SECONDS = 1.0


class LeaseLost(TransientFault):
    """The claim lease ran out or was taken while the handler ran; the handler was cancelled."""


async def run_under_lease(
    store: IdempotencyStore,
    key: str,
    work: Awaitable[T],
    *,
    timeout_seconds: float,
) -> T:
    """Await ``work`` (a handler just given the claim on ``key``) while keeping its lease.

    Returns the handler's result or raises its exception. Raises :class:`LeaseLost` if the
    lease is lost or cannot be confirmed in time, ``TimeoutError`` after ``timeout_seconds``;
    in both cases the handler has been cancelled. The caller releases the claim on failure.
    """
    loop = asyncio.get_running_loop()
    lease = store.lease_seconds
    handler = asyncio.ensure_future(work)
    confirmed_until = loop.time() + lease  # the claim was taken just before
    try:
        async with asyncio.timeout(timeout_seconds):
            while True:
                # Renew after a third of the lease; give up when the lease last confirmed has
                # only a third left (time for the release and a retry to notice).
                wait = min(lease / 3, confirmed_until - lease / 3 - loop.time())
                if wait <= 0:
                    raise LeaseLost(f"{key}: claim lease could not be renewed in time")
                done, _ = await asyncio.wait({handler}, timeout=wait)
                if done:
                    return handler.result()
                asked = loop.time()
                try:
                    held = await asyncio.wait_for(store.renew(key), timeout=lease / 3)
                except Exception as exc:
                    # Redis away or slow: keep the handler going until the deadline above.
                    log.warning("claim lease renewal failed", extra={"reason": repr(exc)})
                    continue
                if not held:
                    raise LeaseLost(f"{key}: claim lease lost while the handler ran")
                confirmed_until = asked + lease
    finally:
        if not handler.done():
            handler.cancel()
            await asyncio.wait({handler}, timeout=_CANCEL_GRACE_SECONDS)
