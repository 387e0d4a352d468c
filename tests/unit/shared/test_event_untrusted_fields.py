"""What a consumer takes from a record it did not write: the order id in its stored spelling, and
an aggregateVersion header that is ASCII digits or poison (never a crash in ``int()``)."""

from __future__ import annotations

import json

import pytest

from shared.contracts import Header
from shared.errors import PoisonMessage
from shared.events import aggregate_version_of, parse_order_cancelled, parse_order_created

STORED_ID = "6b13e4556b13e4556b13e455"


def _event(order_id: str, **fields: object) -> bytes:
    common = {
        "schemaVersion": 1,
        "orderId": order_id,
        "userId": "u-1",
        "customerEmail": "buyer@example.com",
        "total": "25.00",
    }
    return json.dumps(common | fields).encode()


def _created(order_id: str) -> bytes:
    return _event(
        order_id,
        items=[{"sku": "SKU-A", "quantity": 2, "unitPrice": "12.50"}],
        createdAt="2026-11-27T10:00:00Z",
    )


def _cancelled(order_id: str) -> bytes:
    return _event(order_id, cancelledAt="2026-11-27T10:00:00Z")


def test_an_event_written_with_an_upper_case_order_id_names_the_stored_order() -> None:
    # An order API before issue 20 wrote the client's spelling into the cancel event: inventory
    # and email must still find the order's reservation and mail state under the stored id.
    assert parse_order_cancelled(_cancelled(STORED_ID.upper())).order_id == STORED_ID
    assert parse_order_created(_created(STORED_ID.upper())).order_id == STORED_ID


def test_an_order_id_that_is_no_object_id_is_kept_as_written() -> None:
    assert parse_order_cancelled(_cancelled("o-1")).order_id == "o-1"
    assert parse_order_cancelled(_cancelled("X" * 24)).order_id == "X" * 24


@pytest.mark.parametrize(
    "text",
    [
        "\u00b2",  # SUPERSCRIPT TWO: str.isdigit() says yes, int() raises ValueError
        "1\u00b9",
        "\u0662",  # ARABIC-INDIC DIGIT TWO: int() reads it as 2, but no producer writes it
        "\uff12",  # FULLWIDTH DIGIT TWO
        " 2",
        "2\n",
    ],
    ids=repr,
)
def test_a_version_header_that_is_not_ascii_digits_is_poison(text: str) -> None:
    with pytest.raises(PoisonMessage, match=Header.AGGREGATE_VERSION):
        aggregate_version_of({Header.AGGREGATE_VERSION: text})
