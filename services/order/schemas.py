"""The HTTP contract of the order API: request and response bodies, and money rules.

Validation is strict: a quantity of ``"2"`` or ``2.5`` is refused rather than coerced (``2.0`` is
accepted: JSON Schema, and so the published OpenAPI document, counts it as an integer), unknown
fields are refused rather than ignored, identifiers follow :mod:`shared.identifiers` (no control
or bidi characters, not blank, stored in NFC), and a price must be a decimal *string* (a JSON
number is a binary float on most clients, so ``0.1`` may already be ``0.1000000000000000055``
before it reaches us: money never travels that way).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Final

import email_validator
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)

from shared.contracts import OutboxStatus
from shared.identifiers import IDENTIFIER_NORMALISATION, Identifier

MAX_ITEMS: Final = 100
MAX_QUANTITY: Final = 10_000
# A unit price above a billion is a typo, not a product; the cap also keeps every total
# (100 lines x 10 000 x 1e9) far inside Decimal128's 34 significant digits.
MAX_UNIT_PRICE: Final = Decimal("1000000000")
MONEY_PLACES: Final = 2


class OrderStatus(StrEnum):
    """Where an order is in its lifecycle."""

    # Taken by the API; inventory has not answered yet.
    PLACED = "placed"
    # Inventory reserved every item (StockReserved).
    CONFIRMED = "confirmed"
    # Inventory could not reserve it (StockRejected); nothing was taken. Final.
    REJECTED = "rejected"
    # Cancelled by POST /orders/{id}/cancel, before or after the confirmation. Final.
    CANCELLED = "cancelled"


ORDER_STATUS_DESCRIPTION: Final = (
    "`placed` when created; `confirmed` once inventory reserved every item, `rejected` when "
    "it could not (nothing taken); `cancelled` by POST /orders/{id}/cancel from `placed` or "
    "`confirmed` (a cancel of a `rejected` order is 409). `rejected` and `cancelled` are final."
)

# Plain digits with at most two decimals: no sign, exponent, spaces or thousands separators.
# Checked with fullmatch: `$` alone would let a trailing newline through ("12.50\n").
_MONEY_TEXT = re.compile(r"[0-9]+(\.[0-9]{1,2})?")
# The same rule with the cap, as a pattern for the published schema (a string has no JSON Schema
# "maximum"): up to 9 integer digits after any leading zeros, or the cap itself. Built from
# MAX_UNIT_PRICE, which must therefore stay a power of ten.
_CAP_DIGITS: Final = len(str(int(MAX_UNIT_PRICE))) - 1
if Decimal(10) ** _CAP_DIGITS != MAX_UNIT_PRICE:  # pragma: no cover - a guard for editors
    raise ValueError("MAX_UNIT_PRICE must be a power of ten for MONEY_PATTERN")
MONEY_PATTERN: Final = (
    f"^0*(?:[0-9]{{1,{_CAP_DIGITS}}}(?:\\.[0-9]{{1,{MONEY_PLACES}}})?"
    f"|{int(MAX_UNIT_PRICE)}(?:\\.0{{1,{MONEY_PLACES}}})?)$"
)
_CENT: Final = Decimal("0.01")
IDEMPOTENCY_KEY_PATTERN: Final = r"^[\x20-\x7e]{1,255}$"


def parse_money(value: object) -> Decimal:
    """A non-negative amount with at most two decimals, given as a decimal string like ``"12.50"``.

    Raises ``ValueError`` with a message a client can act on; pydantic turns it into a 422 that
    names the field.
    """
    if isinstance(value, Decimal):
        text = str(value)
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        raise ValueError('must be a decimal string such as "12.50", not a boolean')
    elif isinstance(value, int | float):
        raise ValueError(
            'must be a decimal string such as "12.50": JSON numbers are binary floats '
            "and cannot carry exact money"
        )
    else:
        raise ValueError('must be a decimal string such as "12.50"')
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f'must be a decimal string such as "12.50", got {text!r}') from None
    if not amount.is_finite():
        raise ValueError("must be a finite amount")
    if amount < 0:
        raise ValueError("must not be negative")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MONEY_PLACES:
        raise ValueError(f"must have at most {MONEY_PLACES} decimal places")
    if not _MONEY_TEXT.fullmatch(text):
        # "1e2", "+5", " 5", "5." are numbers, but not how this API writes money.
        raise ValueError(f'must be plain digits with at most {MONEY_PLACES} decimals, like "12.50"')
    if amount > MAX_UNIT_PRICE:
        raise ValueError(f"must not exceed {MAX_UNIT_PRICE}")
    # "0.1" and "0.10" are one price: store, hash and publish it one way.
    return amount.quantize(_CENT)


def format_money(amount: Decimal) -> str:
    """Money as JSON sends it: a decimal string with exactly two places (``"25.00"``)."""
    return str(amount.quantize(_CENT))


_MONEY_SCHEMA = {
    "type": "string",
    "pattern": MONEY_PATTERN,
    "examples": ["12.50"],
    "description": "Decimal string, non-negative, at most two decimal places, at most "
    f"{int(MAX_UNIT_PRICE)}.",
}

MoneyIn = Annotated[Decimal, PlainValidator(parse_money), WithJsonSchema(_MONEY_SCHEMA)]
MoneyOut = Annotated[
    Decimal,
    PlainSerializer(format_money, return_type=str),
    WithJsonSchema(
        {
            **_MONEY_SCHEMA,
            "pattern": r"^[0-9]+\.[0-9]{2}$",
            "examples": ["25.00"],
            "description": "Decimal string with two decimal places.",
        }
    ),
]


def compute_total(lines: list[tuple[int, Decimal]]) -> Decimal:
    """Sum of quantity x unit price, exact (Decimal arithmetic, no float anywhere)."""
    return sum((Decimal(quantity) * price for quantity, price in lines), Decimal(0)).quantize(_CENT)


class _StrictIn(BaseModel):
    # strict: "2" is not 2; forbid: a misspelt field ("quantiy") is an error, not a silent default.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _any_case(word: str) -> str:
    # ECMA-262 patterns (JSON Schema) have no inline (?i) flag: spell each letter's two cases.
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


# email-validator (behind EmailStr) refuses addresses in special-use domains (RFC 6761: .test,
# .localhost, .invalid ...), which the "email" format allows; the published pattern says so, with
# the library's own list, so a client generated from the schema never builds one.
EMAIL_DOMAIN_PATTERN: Final = (
    "^.*@(?!(?:.*\\.)?(?:"
    + "|".join(_any_case(name) for name in email_validator.SPECIAL_USE_DOMAIN_NAMES)
    + ")$).*$"
)


def _integral_number(value: object) -> object:
    # JSON Schema's "integer" is any number without a fractional part, so a client generated from
    # the OpenAPI document (or a JavaScript one, which has no int/float distinction) may send 2.0.
    # It means 2; 2.5, "2" and true still reach the strict int check and are refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A whole number of units; 2.0 counts (see above).
Quantity = Annotated[int, BeforeValidator(_integral_number)]


class OrderItemIn(_StrictIn):
    sku: Identifier = Field(
        min_length=1,
        max_length=64,
        description=f"Stock keeping unit. {IDENTIFIER_NORMALISATION}",
    )
    quantity: Quantity = Field(ge=1, le=MAX_QUANTITY, description="Whole units, 1..10000.")
    unit_price: MoneyIn = Field(alias="unitPrice", description="Price of one unit.")


def _string_when_sent(schema: dict[str, Any]) -> None:
    # An optional field is left out, not sent as null: publish the string branch alone (the
    # validator below refuses null to match).
    (string,) = [branch for branch in schema.pop("anyOf") if branch.get("type") != "null"]
    schema.pop("default", None)
    schema.update(string)


class CreateOrderRequest(_StrictIn):
    # The order's user is the bearer token's subject; a client may still say who it is, and the
    # route refuses (403) a userId that is not the subject.
    user_id: Identifier | None = Field(
        default=None,
        alias="userId",
        min_length=1,
        max_length=128,
        description="Optional: the bearer token's subject (`sub`), which the order belongs to "
        f"whether or not it is sent; any other value is refused (403). {IDENTIFIER_NORMALISATION}",
        json_schema_extra=_string_when_sent,
    )
    customer_email: EmailStr = Field(
        alias="customerEmail",
        max_length=254,
        json_schema_extra={"pattern": EMAIL_DOMAIN_PATTERN},
        description="An address a mail server could deliver to: no quoted local part, IP "
        "literal or special-use domain (.test, .localhost, .invalid, .local, .onion, .arpa).",
    )
    items: list[OrderItemIn] = Field(min_length=1, max_length=MAX_ITEMS)

    @field_validator("user_id", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must be a string: leave userId out rather than send null")
        return value

    def total(self) -> Decimal:
        return compute_total([(item.quantity, item.unit_price) for item in self.items])

    def fingerprint(self, user_id: str | None = None) -> str:
        """SHA-256 of the request's meaning, so an idempotent retry may differ in whitespace,
        key order or ``"12.5"`` vs ``"12.50"`` and still be recognised as the same request.

        ``user_id`` is whose order it is (the token's subject), so a retry that leaves out the
        body's ``userId`` is the same request; without it, the body's ``userId``.
        """
        owner = user_id if user_id is not None else self.user_id
        if owner is None:
            raise ValueError("fingerprint of a request without a user: pass the token's subject")
        canonical: dict[str, Any] = {
            "userId": owner,
            "customerEmail": self.customer_email,
            "items": [
                {"sku": i.sku, "quantity": i.quantity, "unitPrice": format_money(i.unit_price)}
                for i in self.items
            ],
        }
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class OrderItemOut(_Out):
    sku: str
    quantity: int
    unit_price: MoneyOut = Field(alias="unitPrice")


class HistoryEntryOut(_Out):
    status: OrderStatus = Field(description="The order's status after this step.")
    at: datetime = Field(description="UTC, millisecond precision.")
    cause: str = Field(
        description="What caused it: the API call (`POST /orders`, "
        "`POST /orders/{id}/cancel`) or the event type of inventory's verdict "
        "(`StockReserved`, `StockRejected`, `StockReleased`)."
    )
    event_id: str | None = Field(
        default=None, alias="eventId", description="The causing event's id; null for an API call."
    )
    note: str | None = Field(
        default=None,
        description="Why, when there is more to say: the rejection's reason, or a verdict that "
        "changed nothing (`verdict after cancel: reserved`).",
    )


class OrderOut(_Out):
    id: str = Field(description="Order id (24 hex characters).")
    user_id: str = Field(alias="userId")
    customer_email: str = Field(alias="customerEmail")
    items: list[OrderItemOut]
    total: MoneyOut = Field(description="Sum of quantity x unitPrice, exact.")
    status: OrderStatus = Field(default=OrderStatus.PLACED, description=ORDER_STATUS_DESCRIPTION)
    history: list[HistoryEntryOut] = Field(
        default_factory=list,
        description="Every step of the order, oldest first: its placement, each transition and "
        "each verdict that arrived after the order had moved on (recorded, status unchanged).",
    )
    created_at: datetime = Field(alias="createdAt", description="UTC, millisecond precision.")
    cancelled_at: datetime | None = Field(
        default=None, alias="cancelledAt", description="UTC; null unless cancelled."
    )


class EventOut(_Out):
    event_id: str = Field(alias="eventId", description="Outbox id; Kafka header idempotencyKey.")
    event_type: str = Field(alias="eventType")
    status: OutboxStatus
    published_at: datetime | None = Field(alias="publishedAt")


class OrderWithEventsOut(OrderOut):
    events: list[EventOut] = Field(description="Outbox events of this order, oldest first.")


class FieldError(BaseModel):
    field: str = Field(description='Dotted path of the offending field, e.g. "items.0.quantity".')
    message: str
    type: str = Field(description="Machine-readable error kind (pydantic's error type).")


class ErrorOut(BaseModel):
    error: str = Field(description="Machine-readable error code.")
    message: str
    fields: list[FieldError] = Field(default_factory=list)
