"""The outbox contract: the one owner of what a producer writes and the relay reads.

Two services produce events through an outbox of their own database: the order API (the
order's events, database ``orders``) and inventory (its verdicts, database ``inventory``). Each
inserts :func:`pending_event_document` into its ``outbox`` inside the transaction of the change
the event announces; a relay configured for that database reads them, publishes them and writes
their status. All import the collection name, the field names, the first aggregate version, the
index list and the TTL setting from here, and all create the indexes through
:func:`ensure_outbox_indexes`, so whichever service starts first the collection gets the same
indexes (in particular the unique one on aggregate and version).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from shared.contracts import OutboxStatus
from shared.mongo import ensure_indexes
from shared.slots import slot_for

OUTBOX_COLLECTION: Final = "outbox"
# The order API gives an aggregate's first event version 1 (its ``version`` after creation);
# versions then run 2, 3, ... with no gap. The relay relies on both to hold events back.
FIRST_VERSION: Final = 1


class OutboxField:
    """Field names of an outbox document (camelCase in MongoDB)."""

    ID: Final = "_id"
    AGGREGATE_TYPE: Final = "aggregateType"
    AGGREGATE_ID: Final = "aggregateId"
    AGGREGATE_VERSION: Final = "aggregateVersion"
    EVENT_TYPE: Final = "eventType"
    PAYLOAD: Final = "payload"
    STATUS: Final = "status"
    # Faults attributable to the event itself (its budget: RELAY_MAX_ATTEMPTS, then Failed).
    ATTEMPTS: Final = "attempts"
    # Rounds lost to faults that were not the event's (Kafka away, a batch-wide error): for
    # operators only, never brings the event closer to Failed.
    TRANSIENT_ATTEMPTS: Final = "transientAttempts"
    CREATED_AT: Final = "createdAt"
    PUBLISHED_AT: Final = "publishedAt"
    LAST_ERROR: Final = "lastError"
    TRACEPARENT: Final = "traceparent"
    # The lease epoch of the relay leader that last wrote the status fields above: which
    # leader published (or failed) an event, and proof that a deposed one wrote nothing.
    # Since slots, the epoch of the event's slot lease.
    RELAY_EPOCH: Final = "relayEpoch"
    # Where Kafka put the event (from the send's RecordMetadata), written with the Published
    # mark: an operator can go from an order straight to its record (console order timeline).
    # Absent on events published before these fields existed, and on Pending or Failed ones.
    KAFKA_TOPIC: Final = "kafkaTopic"
    KAFKA_PARTITION: Final = "kafkaPartition"
    KAFKA_OFFSET: Final = "kafkaOffset"
    # The relay slot of the event, ``shared.slots.slot_for(aggregateId, RELAY_SLOTS)``, stored
    # by the order API in the same transaction. Absent on events written before slots existed:
    # the relays assign it (see services/relay/backfill.py).
    SLOT: Final = "slot"


INDEX_PENDING: Final = "status_1_createdAt_1"
INDEX_AGGREGATE_VERSION: Final = "aggregateId_1_aggregateVersion_1"
INDEX_PUBLISHED_TTL: Final = "publishedAt_ttl"
INDEX_SLOT_PENDING: Final = "slot_1_status_1_createdAt_1"

# Seven days: long enough to look at a published event while debugging a consumer or replaying
# the DLQ, short enough that the outbox does not grow without bound. Pending and Failed events
# have no publishedAt, so the TTL index never expires them.
DEFAULT_PUBLISHED_TTL_SECONDS: Final = 7 * 24 * 3600
PUBLISHED_TTL_ENV: Final = "OUTBOX_PUBLISHED_TTL_SECONDS"
# The two settings this one replaced (in two units). Set, they would be silently ignored.
_RETIRED_TTL_ENV: Final = ("ORDER_OUTBOX_TTL_SECONDS", "RELAY_PUBLISHED_TTL_DAYS")


class OutboxTtlSetting(BaseSettings):
    """The TTL of Published events: one un-prefixed variable read by the order API and the
    relay alike (both create the TTL index, so they must agree on its value)."""

    outbox_published_ttl_seconds: int = Field(
        default=DEFAULT_PUBLISHED_TTL_SECONDS,
        ge=60,
        validation_alias=AliasChoices(PUBLISHED_TTL_ENV, PUBLISHED_TTL_ENV.lower()),
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_retired_names(cls, data: Any) -> Any:
        retired = [name for name in _RETIRED_TTL_ENV if name in os.environ]
        if retired:
            raise ValueError(
                f"{', '.join(retired)} no longer exist: set {PUBLISHED_TTL_ENV} (seconds) instead"
            )
        return data


def outbox_indexes(ttl_seconds: int) -> list[IndexModel]:
    """The outbox's indexes.

    * ``status_1_createdAt_1``: the relay's pending scan (equality on status, oldest first).
    * ``aggregateId_1_aggregateVersion_1`` (unique): one event per aggregate version, and the
      relay's hold-back query (an aggregate's unpublished events by version).
    * ``publishedAt_ttl``: removes Published events ``ttl_seconds`` after publication; Pending
      and Failed events have no ``publishedAt`` and never expire.
    * ``slot_1_status_1_createdAt_1``: each slot owner's pending scan (equality on slot and
      status, oldest first), its Failed-aggregate lookup, the per-slot backlog gauges, and the
      search for events without a slot (``slot: null``) or outside the slot count.
    """
    return [
        IndexModel(
            [(OutboxField.STATUS, ASCENDING), (OutboxField.CREATED_AT, ASCENDING)],
            name=INDEX_PENDING,
        ),
        IndexModel(
            [(OutboxField.AGGREGATE_ID, ASCENDING), (OutboxField.AGGREGATE_VERSION, ASCENDING)],
            name=INDEX_AGGREGATE_VERSION,
            unique=True,
        ),
        IndexModel(
            [(OutboxField.PUBLISHED_AT, ASCENDING)],
            name=INDEX_PUBLISHED_TTL,
            expireAfterSeconds=ttl_seconds,
        ),
        IndexModel(
            [
                (OutboxField.SLOT, ASCENDING),
                (OutboxField.STATUS, ASCENDING),
                (OutboxField.CREATED_AT, ASCENDING),
            ],
            name=INDEX_SLOT_PENDING,
        ),
    ]


async def ensure_outbox_indexes(outbox: AsyncCollection[Any], ttl_seconds: int) -> None:
    """Create the outbox's indexes; idempotent, and loud on a real conflict.

    Raises :class:`shared.mongo.IndexConflict` when an index with one of these names or key
    patterns exists with other options (a non-unique aggregate index, another TTL): the
    guarantee it stands for would otherwise depend on which service started first.
    """
    await ensure_indexes(outbox, outbox_indexes(ttl_seconds))


def utc_now_ms() -> datetime:
    """Now in UTC, truncated to what MongoDB stores (milliseconds): a time written both into an
    event's payload and into a document (its ``createdAt``) then reads back as one instant."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def pending_event_document(
    *,
    aggregate_type: str,
    aggregate_id: str,
    aggregate_version: int,
    event_type: str,
    payload: str,
    created_at: datetime,
    traceparent: str | None,
    slots: int,
) -> dict[str, Any]:
    """A new event waiting for the relay, as the document a producer inserts next to its change
    (in the same transaction): ``Pending``, no attempt yet, and its relay slot among ``slots``
    (``RELAY_SLOTS``) stored with it, so each relay's scan of its slots is one index range.

    ``aggregate_version`` runs from :data:`FIRST_VERSION` with no gap per aggregate (the unique
    index refuses a second event of one version); ``created_at`` is UTC; ``traceparent`` is
    the W3C context of the trace that made the change (None: the relay starts none). The
    relay's own fields (``publishedAt``, ``lastError``) are present as nulls: the documented
    schema stays visible in every document.
    """
    f = OutboxField
    return {
        f.AGGREGATE_TYPE: aggregate_type,
        f.AGGREGATE_ID: aggregate_id,
        f.AGGREGATE_VERSION: aggregate_version,
        f.EVENT_TYPE: event_type,
        f.PAYLOAD: payload,
        f.STATUS: OutboxStatus.PENDING.value,
        f.ATTEMPTS: 0,
        f.CREATED_AT: created_at,
        f.PUBLISHED_AT: None,
        f.LAST_ERROR: None,
        f.TRACEPARENT: traceparent,
        f.SLOT: slot_for(aggregate_id, slots),
    }
