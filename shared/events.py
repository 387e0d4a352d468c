"""The events that cross services: the order's (``OrderCreated``, ``OrderCancelled``, from the
order API) and inventory's verdicts (``StockReserved``, ``StockRejected``, ``StockReleased``).

Each producer serialises them into its own outbox's ``payload`` in the transaction of the change
they announce; a relay publishes that string as the Kafka value unchanged; consumers parse them
with the ``parse_*`` functions, which raise :class:`~shared.errors.PoisonMessage` for anything
that is not a valid event of a known version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Self, TypeAlias, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from shared.contracts import SCHEMA_VERSION, Header
from shared.errors import PoisonMessage
from shared.identifiers import parse_object_id

Money = Annotated[Decimal, Field(ge=0, decimal_places=2, allow_inf_nan=False)]


def _stored_spelling(order_id: str) -> str:
    # The order API writes str(order.id); one before issue 20 wrote a cancel under the client's
    # spelling ("6B13..."). Read as the stored spelling, such an event still finds the order's
    # reservation and mail state. An id that is no ObjectId is left as written.
    oid = parse_object_id(order_id)
    return order_id if oid is None else str(oid)


OrderId = Annotated[str, Field(alias="orderId", min_length=1), AfterValidator(_stored_spelling)]


class _Strict(BaseModel):
    # Strict: a quantity of "2" is a schema violation, not something to coerce.
    model_config = ConfigDict(strict=True, frozen=True, populate_by_name=True)


class EventItem(_Strict):
    sku: str = Field(min_length=1)
    quantity: int = Field(ge=1)
    # Money travels as a decimal string in JSON; strict mode would refuse the string, so this
    # field alone is lax (it still refuses floats' binary noise through decimal_places=2).
    unit_price: Annotated[Money, Field(alias="unitPrice", strict=False)]


class OrderCreated(_Strict):
    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schemaVersion")
    order_id: OrderId
    user_id: str = Field(alias="userId", min_length=1)
    customer_email: str = Field(alias="customerEmail", min_length=3)
    total: Annotated[Money, Field(strict=False)]
    items: list[EventItem] = Field(min_length=1)
    created_at: Annotated[datetime, Field(alias="createdAt", strict=False)]

    def to_json(self) -> str:
        """Compact JSON with camelCase keys, decimals as strings, times as ISO 8601 UTC."""
        return self.model_dump_json(by_alias=True)


class OrderCancelled(_Strict):
    """The order was cancelled (its ``aggregateVersion`` is the one after creation). It carries
    what the email needs; inventory releases what its own reservation recorded."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schemaVersion")
    order_id: OrderId
    user_id: str = Field(alias="userId", min_length=1)
    customer_email: str = Field(alias="customerEmail", min_length=3)
    total: Annotated[Money, Field(strict=False)]
    cancelled_at: Annotated[datetime, Field(alias="cancelledAt", strict=False)]

    def to_json(self) -> str:
        """Compact JSON with camelCase keys, decimals as strings, times as ISO 8601 UTC."""
        return self.model_dump_json(by_alias=True)


class StockLine(_Strict):
    """A SKU and how many of it: what a reservation took and a release gives back."""

    sku: str = Field(min_length=1)
    quantity: int = Field(ge=1)


class _OrderVerdict(_Strict):
    """What both verdicts carry: the customer's address, items and total, copied from the
    ``OrderCreated`` they answer, so the email service builds its mail from the verdict alone
    and reads no other service's data."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schemaVersion")
    order_id: OrderId
    customer_email: str = Field(alias="customerEmail", min_length=3)
    total: Annotated[Money, Field(strict=False)]
    items: list[EventItem] = Field(min_length=1)

    @classmethod
    def answering(cls, order: OrderCreated, **outcome: Any) -> Self:
        """The verdict on ``order``; ``outcome`` holds the fields of this kind of verdict."""
        return cls(
            order_id=order.order_id,
            customer_email=order.customer_email,
            total=order.total,
            items=order.items,
            **outcome,
        )

    def to_json(self) -> str:
        """Compact JSON with camelCase keys, decimals as strings, times as ISO 8601 UTC."""
        return self.model_dump_json(by_alias=True)


class StockReserved(_OrderVerdict):
    """Inventory reserved every item of the order (version 1 of the order's reservation).
    ``StockReserved.answering(order, reserved_at=...)`` builds it."""

    reserved_at: Annotated[datetime, Field(alias="reservedAt", strict=False)]


class StockRejected(_OrderVerdict):
    """Inventory could not reserve the order (version 1 of its reservation): nothing was taken.

    ``reason`` is inventory's sentence (``insufficient stock: SKU-A (wanted 3, available 1)``),
    ``shortSkus`` the SKUs that were short or unknown; address, items and total as in
    :class:`StockReserved`, for the customer's notice.
    """

    reason: str = Field(min_length=1)
    short_skus: list[str] = Field(alias="shortSkus", min_length=1)
    rejected_at: Annotated[datetime, Field(alias="rejectedAt", strict=False)]


class StockReleased(_Strict):
    """A reserved order was cancelled and its stock went back (version 2 of its reservation)."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schemaVersion")
    order_id: OrderId
    items: list[StockLine] = Field(min_length=1)
    released_at: Annotated[datetime, Field(alias="releasedAt", strict=False)]

    def to_json(self) -> str:
        """Compact JSON with camelCase keys, decimals as strings, times as ISO 8601 UTC."""
        return self.model_dump_json(by_alias=True)


OrderEvent: TypeAlias = OrderCreated | OrderCancelled
InventoryEvent: TypeAlias = StockReserved | StockRejected | StockReleased
_E = TypeVar("_E", OrderCreated, OrderCancelled, StockReserved, StockRejected, StockReleased)


def _parse(model: type[_E], value: bytes | None) -> _E:
    if value is None:
        raise PoisonMessage("value is empty (tombstone)")
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage(f"value is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise PoisonMessage(f"value is JSON {type(document).__name__}, not an object")
    version = document.get("schemaVersion")
    if version != SCHEMA_VERSION:
        raise PoisonMessage(
            f"unknown schemaVersion {version!r} (this consumer knows {SCHEMA_VERSION})"
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise PoisonMessage(f"schema violation: {problems}") from exc


def parse_order_created(value: bytes | None) -> OrderCreated:
    """Parse a Kafka value into an event, or raise ``PoisonMessage`` naming what is wrong.

    Never retried: the same bytes fail the same way every time, so they belong in the DLQ.
    """
    return _parse(OrderCreated, value)


def parse_order_cancelled(value: bytes | None) -> OrderCancelled:
    """Like :func:`parse_order_created`, for ``order.cancelled``."""
    return _parse(OrderCancelled, value)


def parse_stock_reserved(value: bytes | None) -> StockReserved:
    """Like :func:`parse_order_created`, for ``inventory.reserved``."""
    return _parse(StockReserved, value)


def parse_stock_rejected(value: bytes | None) -> StockRejected:
    """Like :func:`parse_order_created`, for ``inventory.rejected``."""
    return _parse(StockRejected, value)


def parse_stock_released(value: bytes | None) -> StockReleased:
    """Like :func:`parse_order_created`, for ``inventory.released``."""
    return _parse(StockReleased, value)


def aggregate_version_of(headers: Mapping[str, str]) -> int:
    """The record's ``aggregateVersion`` header (what the relay copies from the outbox), or
    ``PoisonMessage``: a consumer that orders an aggregate's events cannot guess it."""
    text = headers.get(Header.AGGREGATE_VERSION, "")
    # isascii() too: "²" is str.isdigit() and int() raises on it; other scripts' digits int() reads.
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise PoisonMessage(f"{Header.AGGREGATE_VERSION} header must be a positive integer")
    return int(text)
