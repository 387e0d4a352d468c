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

ORDERS_COLLECTION: Final = "orders"
OUTBOX_COLLECTION: Final = "outbox"


def _to_decimal(value: Any) -> Any:
    # Beanie stores Decimal as Decimal128; reading it back must give a Decimal, not a float.
    return value.to_decimal() if isinstance(value, Decimal128) else value


class OrderLine(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    sku: str
    quantity: int
    unit_price: Decimal = Field(alias="unitPrice")

    _decimal = field_validator("unit_price", mode="before")(_to_decimal)


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

    _decimal = field_validator("total", mode="before")(_to_decimal)

    class Settings:
        name = ORDERS_COLLECTION
        keep_nulls = False


class OutboxEvent(Document):
    """One event waiting for (or done with) the relay; the article's outbox schema plus
    aggregateVersion and traceparent."""

    model_config = ConfigDict(populate_by_name=True)

    aggregate_type: str = Field(default=AGGREGATE_ORDER, alias="aggregateType")
    aggregate_id: str = Field(alias="aggregateId")
    aggregate_version: int = Field(alias="aggregateVersion", ge=1)
    event_type: str = Field(default=EVENT_ORDER_CREATED, alias="eventType")
    payload: str
    status: OutboxStatus = OutboxStatus.PENDING
    attempts: int = 0
    created_at: datetime = Field(alias="createdAt")
    published_at: datetime | None = Field(default=None, alias="publishedAt")
    last_error: str | None = Field(default=None, alias="lastError")
    traceparent: str | None = None

    class Settings:
        name = OUTBOX_COLLECTION
        # The relay reads every field; explicit nulls keep the documented schema visible.
        keep_nulls = True


# Index names are fixed so the relay can create the same indexes idempotently at its own start.
INDEX_OUTBOX_PENDING: Final = "status_1_createdAt_1"
INDEX_OUTBOX_AGGREGATE_VERSION: Final = "aggregateId_1_aggregateVersion_1"
INDEX_OUTBOX_PUBLISHED_TTL: Final = "publishedAt_ttl"
INDEX_ORDERS_IDEMPOTENCY_KEY: Final = "idempotencyKey_unique"


def outbox_indexes(ttl_seconds: int) -> list[IndexModel]:
    """The outbox's indexes: the relay's pending scan, one event per aggregate version, and a
    TTL on publishedAt (only Published events have it, so Pending/Failed never expire)."""
    return [
        IndexModel([("status", ASCENDING), ("createdAt", ASCENDING)], name=INDEX_OUTBOX_PENDING),
        IndexModel(
            [("aggregateId", ASCENDING), ("aggregateVersion", ASCENDING)],
            name=INDEX_OUTBOX_AGGREGATE_VERSION,
            unique=True,
        ),
        IndexModel(
            [("publishedAt", ASCENDING)],
            name=INDEX_OUTBOX_PUBLISHED_TTL,
            expireAfterSeconds=ttl_seconds,
        ),
    ]


def order_indexes() -> list[IndexModel]:
    """A unique Idempotency-Key among the orders that have one: the arbiter between concurrent
    requests with the same key (the loser's insert fails inside its transaction)."""
    return [
        IndexModel(
            [("idempotencyKey", ASCENDING)],
            name=INDEX_ORDERS_IDEMPOTENCY_KEY,
            unique=True,
            partialFilterExpression={"idempotencyKey": {"$type": "string"}},
        )
    ]
