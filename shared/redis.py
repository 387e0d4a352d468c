"""Redis client factory: every command fails within a bounded time when Redis is away."""

from __future__ import annotations

from redis.asyncio import Redis

# Two seconds: a dedup check normally takes well under a millisecond; a Redis that does not
# answer in two seconds is treated as down (a transient fault, retried with backoff) rather
# than letting a consumer hang on a dead socket.
REDIS_TIMEOUT_SECONDS = 2.0


def make_redis(url: str, timeout_seconds: float = REDIS_TIMEOUT_SECONDS) -> Redis:
    """An asyncio Redis client with connect and socket timeouts and no hidden retries.

    ``retry=None``: the consumer loop owns retrying (with backoff and metrics); a client that
    silently retried underneath would hide an outage and stretch every timeout.
    """
    client: Redis = Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=None,
        retry_on_timeout=False,
        decode_responses=False,
    )
    return client
