"""The identifier rule: no control, bidi-formatting or separator characters, never blank."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from pydantic_core import PydanticCustomError

from services.order.app import create_app
from services.order.settings import OrderSettings
from shared.identifiers import check_identifier

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
BLANK = ["", " ", "   ", "\u00a0", "\u3000 ", "\ufeff"]


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


def _every_character() -> list[str]:
    """Each code point of the Basic Multilingual Plane but the surrogates, alone (is it blank?)
    and after a letter (is it allowed?), plus characters beyond it (two UTF-16 units in
    JavaScript without the u flag)."""
    values = []
    for code_point in range(0x10000):
        if 0xD800 <= code_point <= 0xDFFF:
            continue
        values += [chr(code_point), "a" + chr(code_point)]
    return [*values, "\U0001f600", "a\U000e0001", "\U0010ffff"]


# Runs the pattern through JavaScript's RegExp: JSON Schema's "pattern" is ECMA-262, and a
# client generated from the OpenAPI document (or a JSON Schema validator) reads it that way.
_ECMA_RUNNER = """
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = {};
for (const flags of input.flags) {
  const pattern = new RegExp(input.pattern, flags);
  out[flags] = input.values.map((value) => pattern.test(value));
}
process.stdout.write(JSON.stringify(out));
"""


def _ecma_matches(pattern: str, values: list[str], flags: list[str]) -> dict[str, list[bool]]:
    node = shutil.which("node")
    # Not a skip: without an ECMA-262 engine the promise below is unchecked, so say so loudly.
    assert node is not None, "this test needs node (an ECMA-262 regex engine) on PATH"
    done = subprocess.run(
        [node, "-e", _ECMA_RUNNER],
        input=json.dumps({"pattern": pattern, "values": values, "flags": flags}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"ECMA-262 refused the pattern {pattern!r}: {done.stderr}"
    result: dict[str, list[bool]] = json.loads(done.stdout)
    return result


def _published_patterns() -> set[str]:
    """The identifier patterns of the order API's OpenAPI document, as a client reads them."""
    schemas = create_app(OrderSettings()).openapi()["components"]["schemas"]
    return {
        schemas["CreateOrderRequest"]["properties"]["userId"]["pattern"],
        schemas["OrderItemIn"]["properties"]["sku"]["pattern"],
    }


def _accepted(value: str) -> bool:
    try:
        check_identifier(value)
    except PydanticCustomError:
        return False
    return True


def test_the_published_pattern_read_as_ecma_262_accepts_exactly_what_the_api_accepts() -> None:
    # A client generated from the schema must build only values the API accepts, and be able to
    # build every value it accepts: compared character by character, the pattern read by a real
    # ECMA-262 engine (with and without the u flag) against the API's own check.
    (pattern,) = _published_patterns()
    values = GOOD + BLANK + CHARACTERS_ONLY + _every_character()
    expected = [_accepted(value) for value in values]

    for flags, matched in _ecma_matches(pattern, values, ["", "u"]).items():
        disagreements = [
            f"{value!r}: API {'accepts' if api else 'refuses'}, pattern/{flags} "
            f"{'matches' if ecma else 'does not'}"
            for value, api, ecma in zip(values, expected, matched, strict=True)
            if api != ecma
        ]
        assert not disagreements, disagreements[:10]


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("cafe\u0301", "caf\u00e9"),  # e + COMBINING ACUTE ACCENT: what macOS and iOS may send
        ("\u212b-1", "\u00c5-1"),  # ANGSTROM SIGN is canonically the letter A with ring
        ("user-1", "user-1"),
    ],
    ids=repr,
)
def test_canonically_equivalent_spellings_are_stored_as_one_nfc_identifier(
    sent: str, stored: str
) -> None:
    # Two spellings of one name must not become two users (an idempotent retry missing its
    # first order) or two SKUs (stock that an order cannot find).
    assert check_identifier(sent) == stored
