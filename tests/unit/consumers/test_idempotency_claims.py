"""The claim/mark protocol on a fake Redis: who gets to do the work, and when it is a duplicate."""

from __future__ import annotations

import fakeredis
import pytest

from shared.contracts import EVENT_ORDER_CREATED, IDEMPOTENCY_TTL_SECONDS
from shared.idempotency import Claim, IdempotencyStore


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis()


def _store(
    redis: fakeredis.FakeAsyncRedis, owner: str, service: str = "inventory"
) -> IdempotencyStore:
    return IdempotencyStore(redis, service, lease_seconds=30, owner=owner)


async def test_first_claim_wins_and_a_second_instance_is_told_busy(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    a, b = _store(redis, "a"), _store(redis, "b")
    key = a.key(EVENT_ORDER_CREATED, "evt-1")
    assert key == "idem:inventory:order_created:evt-1"
    assert await a.claim(key) is Claim.CLAIMED
    assert await b.claim(key) is Claim.BUSY
    assert 0 < await redis.ttl(key) <= 30


async def test_done_marker_makes_every_later_claim_a_duplicate_for_48_hours(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    a, b = _store(redis, "a"), _store(redis, "b")
    key = a.key(EVENT_ORDER_CREATED, "evt-2")
    assert await a.claim(key) is Claim.CLAIMED
    await a.mark_done(key)
    assert await redis.get(key) == b"done"
    assert IDEMPOTENCY_TTL_SECONDS - 5 <= await redis.ttl(key) <= IDEMPOTENCY_TTL_SECONDS
    assert await a.claim(key) is Claim.DONE
    assert await b.claim(key) is Claim.DONE


async def test_release_lets_another_instance_claim_immediately(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    a, b = _store(redis, "a"), _store(redis, "b")
    key = a.key(EVENT_ORDER_CREATED, "evt-3")
    await a.claim(key)
    assert await a.release(key) is True
    assert await b.claim(key) is Claim.CLAIMED


async def test_release_never_deletes_another_instances_lease_or_a_done_marker(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    a, b = _store(redis, "a"), _store(redis, "b")
    key = a.key(EVENT_ORDER_CREATED, "evt-4")
    await b.claim(key)
    assert await a.release(key) is False
    assert await a.claim(key) is Claim.BUSY
    await b.mark_done(key)
    assert await b.release(key) is False
    assert await redis.get(key) == b"done"


async def test_own_leftover_lease_is_reclaimed_after_a_failed_release(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    a = _store(redis, "a")
    key = a.key(EVENT_ORDER_CREATED, "evt-5")
    await a.claim(key)
    # The release never happened (Redis was away): the retry must not wait for its own lease.
    assert await a.claim(key) is Claim.CLAIMED


async def test_one_services_done_marker_does_not_suppress_another_service(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    inventory, email = _store(redis, "a", "inventory"), _store(redis, "b", "email")
    await inventory.claim(inventory.key(EVENT_ORDER_CREATED, "evt-6"))
    await inventory.mark_done(inventory.key(EVENT_ORDER_CREATED, "evt-6"))
    assert await email.claim(email.key(EVENT_ORDER_CREATED, "evt-6")) is Claim.CLAIMED


async def test_dedup_costs_two_round_trips_per_new_event_and_one_per_duplicate(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    a = _store(redis, "a")
    key = a.key(EVENT_ORDER_CREATED, "evt-7")
    await a.claim(key)
    await a.mark_done(key)
    assert a.round_trips == 2
    await a.claim(key)
    assert a.round_trips == 3


async def test_renew_extends_only_our_own_lease(redis: fakeredis.FakeAsyncRedis) -> None:
    a, b = _store(redis, "a"), _store(redis, "b")
    key = a.key(EVENT_ORDER_CREATED, "evt-8")
    await a.claim(key)
    await redis.expire(key, 3)  # most of the lease used up by a slow handler
    assert await a.renew(key) is True
    assert 25 < await redis.ttl(key) <= 30
    assert await b.renew(key) is False  # not b's lease: untouched
    await a.mark_done(key)
    assert await a.renew(key) is False  # done is never turned back into a lease
    assert await redis.get(key) == b"done"
