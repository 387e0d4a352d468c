"""Readiness probes: one real request per component, each bounded by a short timeout.

A probe answers "does the server do its job right now" with a protocol request, not with an open
port: MongoDB ``hello`` must name the replica set (drivers refuse transactions otherwise), Kafka
must answer a metadata request with a broker, Redis ``PING``, the SMTP banner ``220`` and a
service's ``/readyz`` 200. Each probe returns ``False`` instead of raising on a connection error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import socket
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import httpx
import redis
from aiokafka import AIOKafkaClient
from aiokafka.structs import TopicPartition
from pymongo import MongoClient

from shared.contracts import ALL_TOPICS, TOPIC_PARTITIONS
from shared.kafka import SINGLE_BROKER, TopicReplication, ensure_topics
from stack.config import MONGO_REPLICA_SET

PROBE_TIMEOUT_SECONDS = 2.0

T = TypeVar("T")

# A probe expects "connection refused" while a server starts; aiokafka logs each one at ERROR.
# Records emitted inside a probe (tasks inherit this context variable) are dropped; everybody
# else's aiokafka logging is untouched.
_probing: contextvars.ContextVar[bool] = contextvars.ContextVar("stack_probing", default=False)


class _DropWhileProbing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _probing.get()


for _name in ("aiokafka", "aiokafka.conn", "aiokafka.cluster", "aiokafka.admin.client"):
    logging.getLogger(_name).addFilter(_DropWhileProbing())


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, even if this thread has a running loop.

    The supervisor is synchronous; a test may call it from inside pytest-asyncio's loop, where
    ``asyncio.run`` is refused, so then the coroutine runs on a fresh loop in another thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def mongo_ready(host: str, port: int) -> bool:
    timeout_ms = int(PROBE_TIMEOUT_SECONDS * 1000)
    client: MongoClient[dict[str, Any]] = MongoClient(
        host,
        port,
        directConnection=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=timeout_ms,
    )
    try:
        reply = client.admin.command("hello")
        return bool(reply.get("setName") == MONGO_REPLICA_SET and reply.get("isWritablePrimary"))
    except Exception:
        return False
    finally:
        client.close()


async def _kafka_metadata(bootstrap: str, node_id: int | None) -> bool:
    _probing.set(True)
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(PROBE_TIMEOUT_SECONDS * 1000),
        metadata_max_age_ms=1000,
    )
    try:
        await asyncio.wait_for(client.bootstrap(), PROBE_TIMEOUT_SECONDS * 2)
        brokers = {broker.nodeId for broker in client.cluster.brokers()}
        return bool(brokers) if node_id is None else node_id in brokers
    except Exception:
        return False
    finally:
        await client.close()


def kafka_ready(bootstrap: str, node_id: int | None = None) -> bool:
    """A metadata request answered with a live broker; with ``node_id``, one that lists that
    node among the cluster's live (registered, unfenced) brokers."""
    return run_async(_kafka_metadata(bootstrap, node_id))


async def _topics_have_leaders(bootstrap: str, topics: Sequence[str], partitions: int) -> bool:
    _probing.set(True)
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(PROBE_TIMEOUT_SECONDS * 1000)
    )
    try:
        await asyncio.wait_for(client.bootstrap(), PROBE_TIMEOUT_SECONDS * 2)
        metadata = await client.fetch_all_metadata()
        for topic in topics:
            found = metadata.partitions_for_topic(topic) or set()
            if len(found) < partitions:
                return False
            leaders = [metadata.leader_for_partition(TopicPartition(topic, p)) for p in found]
            if any(leader in (None, -1) for leader in leaders):
                return False
        return True
    except Exception:
        return False
    finally:
        await client.close()


def kafka_topics_ready(
    bootstrap: str,
    topics: Sequence[str] = ALL_TOPICS,
    partitions: int = TOPIC_PARTITIONS,
    replication: TopicReplication = SINGLE_BROKER,
) -> bool:
    """Create the project's topics if missing (idempotent) with ``replication`` and report
    whether every partition has a leader: only then can a producer with ``acks=all`` write to
    them. While fewer brokers than the replication factor have joined, the broker refuses the
    topics and this answers False."""

    async def _go() -> bool:
        _probing.set(True)
        try:
            await asyncio.wait_for(ensure_topics(bootstrap, topics, partitions, replication), 15)
        except Exception:
            return False
        return await _topics_have_leaders(bootstrap, topics, partitions)

    return run_async(_go())


def redis_ready(host: str, port: int) -> bool:
    client = redis.Redis(
        host=host,
        port=port,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
    )
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def smtp_ready(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS) as sock:
            banner = sock.makefile("rb").readline()
            sock.sendall(b"QUIT\r\n")
            return banner.startswith(b"220")
    except OSError:
        return False


def http_ready(host: str, port: int, path: str = "/readyz") -> bool:
    try:
        response = httpx.get(f"http://{host}:{port}{path}", timeout=PROBE_TIMEOUT_SECONDS)
    except httpx.HTTPError:
        return False
    return response.status_code == 200
