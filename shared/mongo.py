"""MongoDB plumbing: one client factory and one transaction runner for every service.

Uses PyMongo's native asyncio API (``AsyncMongoClient``), the official successor of Motor.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference
from pymongo.write_concern import WriteConcern

log = logging.getLogger(__name__)

T = TypeVar("T")
MongoClient = AsyncMongoClient[dict[str, Any]]

MAJORITY = WriteConcern("majority")


def make_mongo_client(uri: str, timeout_seconds: float, app_name: str) -> MongoClient:
    """A client whose every operation fails within ``timeout_seconds`` when MongoDB is away.

    ``timeoutMS`` (client-side operation timeout) bounds server selection, connection and
    socket waits alike, so an unreachable server surfaces as an error, never a hang.
    Majority writes and tz-aware datetimes (always UTC) are the defaults for every collection.
    """
    timeout_ms = int(timeout_seconds * 1000)
    return AsyncMongoClient(
        uri,
        appname=app_name,
        tz_aware=True,
        w="majority",
        retryWrites=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        timeoutMS=timeout_ms,
        uuidRepresentation="standard",
    )


async def run_in_transaction(
    client: MongoClient,
    work: Callable[[AsyncClientSession], Awaitable[T]],
    *,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Run ``work`` in one multi-document transaction with PyMongo's ``with_transaction`` rules.

    The whole callback is retried on ``TransientTransactionError`` and the commit alone on
    ``UnknownTransactionCommitResult`` (both until PyMongo's 120 s budget or the client's
    ``timeoutMS``), with majority write concern and snapshot reads. ``work`` must therefore be
    safe to run more than once: it may only touch the database through ``session``.
    ``on_retry`` is called once per extra attempt (for a metric).
    """
    attempts = 0

    async def _callback(session: AsyncClientSession) -> T:
        nonlocal attempts
        attempts += 1
        if attempts > 1 and on_retry is not None:
            on_retry()
        return await work(session)

    async with client.start_session() as session:
        return await session.with_transaction(
            _callback,
            read_concern=ReadConcern("snapshot"),
            write_concern=MAJORITY,
            read_preference=ReadPreference.PRIMARY,
        )


async def transactions_supported(client: MongoClient) -> bool:
    """True when the server is a replica-set primary (or mongos): what transactions need."""
    hello = await client.admin.command("hello")
    return bool(hello.get("setName") or hello.get("msg") == "isdbgrid") and bool(
        hello.get("isWritablePrimary", hello.get("ismaster"))
    )
