"""MongoDB documents of the order API (Beanie over PyMongo's AsyncMongoClient).

Field names are camelCase in MongoDB (the outbox schema other services read); money is
``Decimal`` in Python and ``Decimal128`` in MongoDB; every datetime is UTC.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from beanie import Document
from bson import Decimal128
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymongo import ASCENDING, IndexModel

from shared.contracts import AGGREGATE_ORDER, EVENT_ORDER_CREATED, OutboxStatus
from shared.outbox import FIRST_VERSION, OUTBOX_COLLECTION, OutboxField, pending_event_document

ORDERS_COLLECTION: Final = "orders"


def _to_decimal(value: Any) -> Any:
    # Beanie stores Decimal as Decimal128; reading it back must give a Decimal, not a float.
    return value.to_decimal() if isinstance(value, Decimal128) else value


class OrderLine(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    sku: str
    quantity: int
    unit_price: Decimal = Field(alias="unitPrice")

    _decimal = field_validator("unit_price", mode="before")(_to_decimal)


class HistoryEntry(BaseModel):
    """One step of an order's lifecycle (see :mod:`services.order.lifecycle`): the status after
    it, when (UTC), what caused it (the API call, or the verdict's event type and id) and, where
    there is more to say, a note (a rejection's reason, a verdict that changed nothing)."""

    model_config = ConfigDict(populate_by_name=True)

    status: str
    at: datetime
    cause: str
    event_id: str | None = Field(default=None, alias="eventId")
    note: str | None = None


class Order(Document):
    """An order. ``version`` is the aggregate's own event sequence (1 after creation): the
    transaction that writes an event sets it, and the event carries it as aggregateVersion."""

    model_config = ConfigDict(populate_by_name=True)

    user_id: str = Field(alias="userId")
    customer_email: str = Field(alias="customerEmail")
    items: list[OrderLine]
    total: Decimal
    status: str
    created_at: datetime = Field(alias="createdAt")
    version: int = Field(ge=1)
    # Absent (not null) when the client sent no Idempotency-Key, so the partial unique index
    # only covers orders that have a key.
    idempotency_key: str | None = Field(default=None, alias="idempotencyKey")
    request_hash: str | None = Field(default=None, alias="requestHash")
    # Set by POST /orders/{id}/cancel (absent until then, for the same partial-index reason).
    cancelled_at: datetime | None = Field(default=None, alias="cancelledAt")
    cancel_idempotency_key: str | None = Field(default=None, alias="cancelIdempotencyKey")
    # Appended by each transition, in the write that makes it. The placement itself is not
    # stored: it is read from createdAt (services.order.lifecycle.history_of).
    history: list[HistoryEntry] = Field(default_factory=list)

    _decimal = field_validator("total", mode="before")(_to_decimal)

    class Settings:
        name = ORDERS_COLLECTION
        keep_nulls = False


class OutboxEvent(Document):
    """One event waiting for (or done with) the relay: the contract of ``shared.outbox`` (the
    article's outbox schema plus aggregateVersion and traceparent) as a Beanie document."""

    model_config = ConfigDict(populate_by_name=True)

    aggregate_type: str = Field(default=AGGREGATE_ORDER, alias=OutboxField.AGGREGATE_TYPE)
    aggregate_id: str = Field(alias=OutboxField.AGGREGATE_ID)
    aggregate_version: int = Field(alias=OutboxField.AGGREGATE_VERSION, ge=FIRST_VERSION)
    event_type: str = Field(default=EVENT_ORDER_CREATED, alias=OutboxField.EVENT_TYPE)
    payload: str = Field(alias=OutboxField.PAYLOAD)
    status: OutboxStatus = Field(default=OutboxStatus.PENDING, alias=OutboxField.STATUS)
    attempts: int = Field(default=0, alias=OutboxField.ATTEMPTS)
    created_at: datetime = Field(alias=OutboxField.CREATED_AT)
    published_at: datetime | None = Field(default=None, alias=OutboxField.PUBLISHED_AT)
    last_error: str | None = Field(default=None, alias=OutboxField.LAST_ERROR)
    traceparent: str | None = Field(default=None, alias=OutboxField.TRACEPARENT)
    slot: int | None = Field(default=None, alias=OutboxField.SLOT)

    @classmethod
    def pending(
        cls,
        *,
        aggregate_id: str,
        aggregate_version: int,
        event_type: str,
        payload: str,
        created_at: datetime,
        traceparent: str,
        slots: int,
    ) -> OutboxEvent:
        """A new event of an order, waiting for the relay: what every order transaction writes
        next to its change. Its relay slot (among ``slots``, ``RELAY_SLOTS``) is stored with it,
        so each relay's scan of its slots is one index range."""
        event: OutboxEvent = cls.model_validate(
            pending_event_document(
                aggregate_type=AGGREGATE_ORDER,
                aggregate_id=aggregate_id,
                aggregate_version=aggregate_version,
                event_type=event_type,
                payload=payload,
                created_at=created_at,
                traceparent=traceparent,
                slots=slots,
            )
        )
        return event

    class Settings:
        name = OUTBOX_COLLECTION
        # The relay reads every field; explicit nulls keep the documented schema visible.
        keep_nulls = True


INDEX_ORDERS_IDEMPOTENCY_KEY: Final = "userId_1_idempotencyKey_1_unique"
INDEX_ORDERS_CANCEL_IDEMPOTENCY_KEY: Final = "userId_1_cancelIdempotencyKey_unique"
# The key spec of the index that made keys global (before they were scoped to the user); the
# API drops it at start-up (services.order.indexes).
LEGACY_IDEMPOTENCY_KEY_SPEC: Final = {"idempotencyKey": 1}


def order_indexes() -> list[IndexModel]:
    """Unique (userId, key) among the orders that have a create (or cancel) Idempotency-Key:
    the arbiter between concurrent requests of one user with one key (the loser's write fails
    inside its transaction). Scoped to the user, so one user's key never collides with
    another's."""
    return [
        IndexModel(
            [("userId", ASCENDING), ("idempotencyKey", ASCENDING)],
            name=INDEX_ORDERS_IDEMPOTENCY_KEY,
            unique=True,
            partialFilterExpression={"idempotencyKey": {"$type": "string"}},
        ),
        # A cancel's Idempotency-Key is unique per user: reusing it to cancel another order of
        # the same user is a conflict, decided by this index between concurrent requests.
        IndexModel(
            [("userId", ASCENDING), ("cancelIdempotencyKey", ASCENDING)],
            name=INDEX_ORDERS_CANCEL_IDEMPOTENCY_KEY,
            unique=True,
            partialFilterExpression={"cancelIdempotencyKey": {"$type": "string"}},
        ),
    ]
