"""Money parsing, exact totals and strict request validation (pure logic, no servers)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from services.order.handlers import traceparent_for
from services.order.schemas import (
    MONEY_PATTERN,
    CreateOrderRequest,
    compute_total,
    format_money,
    parse_money,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12.50", "12.50"),
        ("0", "0.00"),
        ("0.1", "0.10"),
        ("7", "7.00"),
        ("1000000000", "1000000000.00"),
    ],
)
def test_money_strings_parse_exactly(text: str, expected: str) -> None:
    assert parse_money(text) == Decimal(expected)
    assert str(parse_money(text)) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (12.5, "JSON numbers"),
        (12, "JSON numbers"),
        (True, "boolean"),
        (None, "decimal string"),
        ("-1.00", "negative"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("1.005", "2 decimal places"),
        ("12.500", "2 decimal places"),
        ("1e2", "plain digits"),
        ("+5", "plain digits"),
        ("12.50\n", "plain digits"),
        ("12.50\r\n", "plain digits"),
        ("abc", "decimal string"),
        ("1000000000.01", "exceed"),
    ],
)
def test_bad_money_is_refused_with_a_reason(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_money(value)


def test_total_is_exact_where_floats_are_not() -> None:
    # 99 lines of 10 000 x 999 999 999.99 and one cent: 989 999 999 990 100.01 needs 17
    # significant digits; summed as binary floats it comes out a cent short (...100.00).
    lines = [(10_000, Decimal("999999999.99"))] * 99 + [(1, Decimal("0.01"))]
    assert compute_total(lines) == Decimal("989999999990100.01")
    assert format_money(compute_total([(1, Decimal("0.10")), (1, Decimal("0.20"))])) == "0.30"


def test_largest_order_total_stays_exact() -> None:
    lines = [(10_000, Decimal("999999999.99"))] * 100
    assert compute_total(lines) == Decimal("999999999990000.00")


def _body(**overrides: Any) -> dict[str, Any]:
    return {
        "userId": "u",
        "customerEmail": "a@example.com",
        "items": [{"sku": "A", "quantity": 2, "unitPrice": "1.25"}],
        **overrides,
    }


def test_valid_request_computes_its_total() -> None:
    request = CreateOrderRequest.model_validate(
        _body(
            items=[
                {"sku": "A", "quantity": 2, "unitPrice": "1.25"},
                {"sku": "B", "quantity": 1, "unitPrice": "0.5"},
            ]
        )
    )
    assert request.total() == Decimal("3.00")


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"items": [{"sku": "A", "quantity": "2", "unitPrice": "1"}]}, ("items", 0, "quantity")),
        ({"items": [{"sku": "A", "quantity": 2.5, "unitPrice": "1"}]}, ("items", 0, "quantity")),
        ({"items": [{"sku": "A", "quantity": True, "unitPrice": "1"}]}, ("items", 0, "quantity")),
        ({"items": [{"sku": "A", "quantity": 10_001, "unitPrice": "1"}]}, ("items", 0, "quantity")),
        ({"items": []}, ("items",)),
        ({"items": [{"sku": "A", "quantity": 1, "unitPrice": "1"}] * 101}, ("items",)),
        ({"customerEmail": "nope"}, ("customerEmail",)),
        ({"extra": 1}, ("extra",)),
        ({"userId": ""}, ("userId",)),
    ],
)
def test_invalid_requests_name_the_field(overrides: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        CreateOrderRequest.model_validate(_body(**overrides))
    assert loc in [tuple(e["loc"]) for e in caught.value.errors()]


_LINE: dict[str, Any] = {"sku": "A", "quantity": 2, "unitPrice": "1.20"}


def _request(*, lines: list[dict[str, Any]] | None = None, **fields: Any) -> CreateOrderRequest:
    return CreateOrderRequest.model_validate(_body(items=lines or [_LINE], **fields))


@pytest.mark.parametrize(
    ("one", "other"), [("1.2", "1.20"), ("01.20", "1.2"), ("7", "7.00"), ("0.5", "000.50")]
)
def test_fingerprint_ignores_how_a_price_is_spelt(one: str, other: str) -> None:
    # An idempotent retry may come from another client that writes the price its own way: the
    # same request must be recognised (replayed), not refused as a reuse of the key (409).
    spelt_one = _request(lines=[{**_LINE, "unitPrice": one}])
    spelt_other = _request(lines=[{**_LINE, "unitPrice": other}])
    assert spelt_one.fingerprint() == spelt_other.fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"userId": "other"},
        {"customerEmail": "b@example.com"},
        {"lines": [{**_LINE, "sku": "B"}]},
        {"lines": [{**_LINE, "quantity": 3}]},
        {"lines": [{**_LINE, "unitPrice": "1.21"}]},
        {"lines": [_LINE, _LINE]},
    ],
    ids=["user", "email", "sku", "quantity", "price", "lines"],
)
def test_fingerprint_tells_every_change_of_meaning(change: dict[str, Any]) -> None:
    # A key reused with another request must be a 409, never the replay of another order.
    assert _request(**change).fingerprint() != _request().fingerprint()


def test_valid_traceparent_keeps_the_trace_and_flags() -> None:
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    out = traceparent_for(incoming)
    assert out.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert out.endswith("-00")
    assert out != incoming


@pytest.mark.parametrize(
    "incoming",
    [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    ],
)
def test_missing_or_invalid_traceparent_starts_a_new_trace(incoming: str | None) -> None:
    out = traceparent_for(incoming)
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", out)
    assert "0" * 32 not in out


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "0.5",
        "12.50",
        "00066.10",
        "999999999.99",
        "1000000000",
        "1000000000.0",
        "1000000000.00",
        "0001000000000",
        "1000000000.01",
        "1000000001",
        "9999999999",
        "12.50\n",
        "12.505",
        ".5",
        "5.",
        "-1",
        "1e3",
        "",
    ],
)
def test_published_money_pattern_agrees_with_the_parser(text: str) -> None:
    # A client generated from the OpenAPI document builds prices from MONEY_PATTERN: whatever it
    # matches must be accepted, and nothing else.
    try:
        parse_money(text)
        accepted = True
    except ValueError:
        accepted = False
    assert (re.fullmatch(MONEY_PATTERN, text) is not None) == accepted
