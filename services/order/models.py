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
from shared.outbox import FIRST_VERSION, OUTBOX_COLLECTION, OutboxField

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

    class Settings:
        name = OUTBOX_COLLECTION
        # The relay reads every field; explicit nulls keep the documented schema visible.
        keep_nulls = True


INDEX_ORDERS_IDEMPOTENCY_KEY: Final = "idempotencyKey_unique"


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
