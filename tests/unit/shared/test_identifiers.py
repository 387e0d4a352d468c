"""The identifier rule: no control, bidi-formatting or separator characters, never blank."""

from __future__ import annotations

import re

import pytest
from pydantic_core import PydanticCustomError

from shared.identifiers import IDENTIFIER_PATTERN, check_identifier

GOOD = ["user-1", "SKU-A", "a b", "caf\u00e9", "\u65e5\u672c", " padded ", "x" * 200, "\u200d"]
BAD = {
    "NUL": "\u0000",
    "tab": "a\tb",
    "newline at the end": "user-1\n",
    "DEL": "a\u007f",
    "C1 NEL": "a\u0085",
    "RLO": "\u202e",
    "LRE": "a\u202ab",
    "PDF": "a\u202c",
    "LRI": "\u2066a",
    "PDI": "a\u2069",
    "RLM": "a\u200f",
    "ALM": "a\u061c",
    "line separator": "a\u2028b",
    "lone surrogate": "a\ud800",
}
BLANK = ["", " ", "   ", "\u00a0", "\u3000 "]


@pytest.mark.parametrize("value", GOOD)
def test_ordinary_identifiers_pass_unchanged(value: str) -> None:
    assert check_identifier(value) == value


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_control_and_bidi_characters_are_refused_naming_the_code_point(value: str) -> None:
    with pytest.raises(PydanticCustomError) as refused:
        check_identifier(value)
    assert refused.value.type == "forbidden_character"
    assert "U+" in str(refused.value)


@pytest.mark.parametrize("value", BLANK, ids=repr)
def test_blank_identifiers_are_refused(value: str) -> None:
    with pytest.raises(PydanticCustomError) as refused:
        check_identifier(value)
    assert refused.value.type == "blank"


# Surrogates are not characters and stay out of the published pattern (see shared.identifiers).
CHARACTERS_ONLY = [value for name, value in BAD.items() if name != "lone surrogate"]


@pytest.mark.parametrize("value", GOOD + BLANK + CHARACTERS_ONLY, ids=repr)
def test_published_pattern_agrees_with_the_check(value: str) -> None:
    # The OpenAPI schema carries IDENTIFIER_PATTERN: a client generated from it must build only
    # values the check accepts, and every value the check accepts must match it.
    try:
        check_identifier(value)
        accepted = True
    except PydanticCustomError:
        accepted = False
    assert (re.fullmatch(IDENTIFIER_PATTERN, value) is not None) == accepted
