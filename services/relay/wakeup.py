"""Wake the publish loop of an event's slot the moment the event is inserted.

A change stream on ``outbox`` inserts calls ``notify`` with the inserted document (the relay
hands it to the worker of its ``slot``, which publishes it from the document when that is safe,
see ``stream_feed.py``, or assigns a slot first when it has none); every slot's publish loop
also sweeps every ``sweep_interval`` seconds, so the stream is only a latency optimisation and
never the source of truth. That is what makes every stream failure easy to
handle safely: whatever the stream misses (a restart, a lost or unusable resume token,
``ChangeStreamHistoryLost``, an ``invalidate``) is still ``Pending`` in the collection and the
sweep publishes it.

The resume token is persisted (collection ``relay_resume_token``) so a restarted or new leader
resumes where the stream was instead of starting blind; an unusable token is dropped and the
stream reopened without one, never skipping history because the sweep covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from services.relay.metrics import RelayMetrics
from shared.backoff import Backoff, wait_or_stop
from shared.outbox import OUTBOX_COLLECTION

log = logging.getLogger(__name__)

TOKEN_COLLECTION = "relay_resume_token"
# One token per watched collection, named after it.
TOKEN_ID = OUTBOX_COLLECTION
# How long one getMore waits on the server: bounds how late a stop request is noticed.
MAX_AWAIT_MS = 500
_PIPELINE = [{"$match": {"operationType": {"$in": ["insert", "invalidate"]}}}]
# Why the publish loop was woken (label of relay_wakeups_total; the loop adds "sweep").
WAKE_CHANGE = "change_stream"  # an insert notification
WAKE_STREAM_OPENED = "stream_opened"  # (re)opened or broken: whatever it missed needs a sweep

# notify(reason, inserted document or None): None means every slot should look (the stream
# (re)opened or broke, so it may have missed inserts).
Notify = Callable[[str, Mapping[str, Any] | None], None]


class Wakeup:
    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        notify: Notify,
        metrics: RelayMetrics,
        *,
        save_interval: float,
        backoff: Backoff,
    ) -> None:
        self._db = db
        self._outbox = db[OUTBOX_COLLECTION]
        self._tokens = db[TOKEN_COLLECTION]
        self._notify = notify
        self._metrics = metrics
        self._save_interval = save_interval
        # The service's own pacing (RELAY_BACKOFF_*), not a second copy of it.
        self._backoff = backoff
        self._saved: Mapping[str, Any] | None = None
        self._saved_at = 0.0

    def _wake(self, reason: str, document: Mapping[str, Any] | None = None) -> None:
        self._notify(reason, document)

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until ``stop`` is set. Never raises: a broken stream only costs latency."""
        backoff = self._backoff
        token: Mapping[str, Any] | None = None
        loaded = False
        healthy = True
        while not stop.is_set():
            try:
                if not loaded:
                    token = await self._load_token()
                    loaded = True
                async with await self._outbox.watch(
                    _PIPELINE, resume_after=token, max_await_time_ms=MAX_AWAIT_MS
                ) as stream:
                    if not healthy:
                        log.info("change stream reopened", extra={"component": "wakeup"})
                        healthy = True
                    backoff.reset()
                    # The stream was closed for a while: let the publish loop sweep now.
                    self._wake(WAKE_STREAM_OPENED)
                    while stream.alive and not stop.is_set():
                        change = await stream.try_next()
                        if change is not None:
                            if change.get("operationType") == "invalidate":
                                break
                            inserted = change.get("fullDocument")
                            # An insert without its document (never expected) wakes every slot.
                            self._wake(
                                WAKE_CHANGE, inserted if isinstance(inserted, Mapping) else None
                            )
                        if stream.resume_token is not None:
                            token = stream.resume_token
                            await self._maybe_save(token)
                    else:
                        if stop.is_set():
                            await self._maybe_save(token, force=True)
                            return
                # Only an invalidate (collection dropped or renamed) ends the stream here. Its
                # token cannot be resumed after; start afresh and let the sweep catch up.
                log.warning(
                    "change stream invalidated; reopening without resume token",
                    extra={"component": "wakeup"},
                )
                await self._drop_token()
                token = None
                self._wake(WAKE_STREAM_OPENED)
            except OperationFailure as exc:
                # With a token, a server-side refusal almost always means the token is unusable
                # (ChangeStreamHistoryLost 286, InvalidResumeToken 260, ChangeStreamFatalError 280,
                # or a parse failure). Dropping it is always safe: the sweep covers the gap.
                if token is not None:
                    log.warning(
                        "resume token unusable; reopening without it",
                        extra={"component": "wakeup", "reason": f"{exc.code}: {exc}"},
                    )
                    await self._drop_token_quietly()
                    token = None
                    self._wake(WAKE_STREAM_OPENED)
                    continue
                healthy = self._log_down(healthy, exc)
                if await wait_or_stop(stop, backoff.next_delay()):
                    return
            except PyMongoError as exc:
                healthy = self._log_down(healthy, exc)
                self._wake(WAKE_STREAM_OPENED)
                if await wait_or_stop(stop, backoff.next_delay()):
                    return

    def _log_down(self, healthy: bool, exc: BaseException) -> bool:
        if healthy:
            log.warning(
                "change stream unavailable; relying on the sweep",
                extra={"component": "wakeup", "reason": repr(exc)},
            )
        return False

    async def _load_token(self) -> Mapping[str, Any] | None:
        doc = await self._tokens.find_one({"_id": TOKEN_ID})
        token = doc.get("token") if doc else None
        self._saved = token
        return token if isinstance(token, Mapping) else None

    async def _maybe_save(self, token: Mapping[str, Any] | None, *, force: bool = False) -> None:
        if token is None or token == self._saved:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < self._save_interval:
            return
        # Every relay watches the stream and saves the token of the one document; two first
        # upserts at once can collide on the _id: either token will do.
        with contextlib.suppress(DuplicateKeyError):
            await self._tokens.update_one(
                {"_id": TOKEN_ID},
                {"$set": {"token": dict(token), "savedAt": datetime.now(UTC)}},
                upsert=True,
            )
        self._saved, self._saved_at = token, now
        self._metrics.token_saved()

    async def _drop_token(self) -> None:
        await self._tokens.delete_one({"_id": TOKEN_ID})
        self._saved = None

    async def _drop_token_quietly(self) -> None:
        try:
            await self._drop_token()
        except PyMongoError as exc:
            # Next open would use the token again and fail again; we pass None regardless.
            log.warning("could not delete resume token", extra={"reason": repr(exc)})
