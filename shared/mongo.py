"""MongoDB plumbing: one client factory and one transaction runner for every service.

Uses PyMongo's native asyncio API (``AsyncMongoClient``), the official successor of Motor.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from pymongo import AsyncMongoClient, IndexModel, monitoring
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference
from pymongo.write_concern import WriteConcern

log = logging.getLogger(__name__)

T = TypeVar("T")
MongoClient = AsyncMongoClient[dict[str, Any]]

MAJORITY = WriteConcern("majority")


def make_mongo_client(
    uri: str,
    timeout_seconds: float,
    app_name: str,
    *,
    event_listeners: Sequence[monitoring.CommandListener] = (),
) -> MongoClient:
    """A client whose every operation fails within ``timeout_seconds`` when MongoDB is away.

    ``timeoutMS`` (client-side operation timeout) bounds server selection, connection and
    socket waits alike, so an unreachable server surfaces as an error, never a hang.
    Majority writes and tz-aware datetimes (always UTC) are the defaults for every collection.
    ``event_listeners`` see every command (tests count a request's round trips with them).
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
        event_listeners=list(event_listeners),
    )


async def run_in_transaction(
    client: MongoClient,
    work: Callable[[AsyncClientSession], Awaitable[T]],
    *,
    on_retry: Callable[[], None] | None = None,
    session: AsyncClientSession | None = None,
) -> T:
    """Run ``work`` in one multi-document transaction with PyMongo's ``with_transaction`` rules.

    The whole callback is retried on ``TransientTransactionError`` and the commit alone on
    ``UnknownTransactionCommitResult`` (both until PyMongo's 120 s budget or the client's
    ``timeoutMS``), with majority write concern and snapshot reads. ``work`` must therefore be
    safe to run more than once: it may only touch the database through ``session``.
    ``on_retry`` is called once per extra attempt (for a metric). ``session``: run in this
    session (the caller's, one transaction at a time) instead of a new one.
    """
    attempts = 0

    async def _callback(session: AsyncClientSession) -> T:
        nonlocal attempts
        attempts += 1
        if attempts > 1 and on_retry is not None:
            on_retry()
        return await work(session)

    async def run(session: AsyncClientSession) -> T:
        return await session.with_transaction(
            _callback,
            read_concern=ReadConcern("snapshot"),
            write_concern=MAJORITY,
            read_preference=ReadPreference.PRIMARY,
        )

    if session is not None:
        return await run(session)
    async with client.start_session() as own:
        return await run(own)


def ping_check(client: MongoClient) -> Callable[[], Awaitable[bool]]:
    """A readiness check for a consumer service (``extra_ready``): MongoDB answers a ping within
    the client's ``timeoutMS``. It raises rather than hang when MongoDB is away; the health
    server counts a raise as not ready."""

    async def ping() -> bool:
        await client.admin.command("ping")
        return True

    return ping


async def transactions_supported(client: MongoClient) -> bool:
    """True when the server is a replica-set primary (or mongos): what transactions need."""
    hello = await client.admin.command("hello")
    return bool(hello.get("setName") or hello.get("msg") == "isdbgrid") and bool(
        hello.get("isWritablePrimary", hello.get("ismaster"))
    )


# MongoDB's answers when an index of that name or key pattern exists with other options:
# IndexOptionsConflict and IndexKeySpecsConflict.
INDEX_CONFLICT_CODES = frozenset({85, 86})
# Options that change what an index guarantees or removes; two indexes that agree on these and
# on the key pattern are the same index whatever their names.
_MEANINGFUL_INDEX_OPTIONS = ("unique", "sparse", "expireAfterSeconds", "partialFilterExpression")


class IndexConflict(RuntimeError):
    """An existing index contradicts one a service needs (same name or keys, other options).

    Never swallowed: a guarantee such as uniqueness must not depend on which service created
    the index first. The message names the collection, both specifications and the fix.
    """


def _shape(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """Key pattern and meaningful options, normalised (absent ``unique`` is ``False``, a TTL
    the server returns as a double is the same TTL)."""
    options: list[tuple[str, Any]] = []
    for name in _MEANINGFUL_INDEX_OPTIONS:
        value = spec.get(name)
        if name in ("unique", "sparse"):
            value = bool(value)
        elif name == "expireAfterSeconds" and value is not None:
            value = int(value)
        options.append((name, value))
    return (_keys(spec), tuple(options))


async def ensure_indexes(collection: AsyncCollection[Any], wanted: Sequence[IndexModel]) -> None:
    """Create ``wanted`` on ``collection``: idempotent, and loud on a real conflict.

    An index that already exists with the same name (or the same key pattern under another
    name) and the same meaningful options counts as present. One with other options raises
    :class:`IndexConflict`; it is never dropped or altered here, since doing that silently could
    remove a guarantee another service relies on. Two services creating the same index at the
    same moment is fine: the server treats an identical createIndexes as a no-op.
    """
    for model in wanted:
        spec = model.document
        for attempt in range(2):
            existing = [dict(ix) async for ix in await collection.list_indexes()]
            same = [ix for ix in existing if ix["name"] == spec["name"] or _keys(ix) == _keys(spec)]
            if any(_shape(ix) == _shape(spec) for ix in same):
                break
            if same:
                raise _conflict(collection, spec, same[0])
            try:
                await collection.create_indexes([model])
                break
            except OperationFailure as exc:
                # Someone created a clashing index between our listing and our create: look
                # again once, then report what is there.
                if exc.code not in INDEX_CONFLICT_CODES or attempt == 1:
                    raise
        else:  # pragma: no cover - the loop always breaks or raises
            raise AssertionError("unreachable")


def _keys(spec: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    return tuple((field, int(order)) for field, order in spec["key"].items())


def _conflict(
    collection: AsyncCollection[Any], wanted: Mapping[str, Any], found: Mapping[str, Any]
) -> IndexConflict:
    def show(spec: Mapping[str, Any]) -> str:
        options = {k: spec[k] for k in _MEANINGFUL_INDEX_OPTIONS if k in spec}
        return f"{spec['name']} {dict(_keys(spec))} {options}"

    return IndexConflict(
        f"index conflict on {collection.full_name}: need {show(wanted)}, found {show(found)}. "
        f"Drop the existing index (it is recreated at start-up) or change it with collMod."
    )
