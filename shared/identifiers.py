"""What an identifier may contain (user ids, SKUs, order ids sent by clients).

An identifier travels from the HTTP request into MongoDB, the outbox payload, Kafka headers and
records, Redis keys, logs and e-mails. Characters that are invisible or that rearrange text there
are refused at the door:

* control characters (Unicode category Cc: NUL, ESC, CR/LF, C1 controls such as NEL): they split
  log lines, end C strings and inject terminal escapes;
* bidirectional formatting characters (U+061C, U+200E/U+200F marks, U+202A-U+202E embeddings and
  overrides, U+2066-U+2069 isolates; the "Trojan Source" set): they make ``SKU-A\\u202e1`` read as
  something else in every viewer;
* line and paragraph separators (U+2028/U+2029): line breaks to log viewers and JavaScript;
* lone surrogates (U+D800-U+DFFF): possible in a JSON string escape, but without a UTF-8
  encoding, so BSON, Kafka and SMTP could not carry them;

and an identifier that is empty or only whitespace (as ECMA-262 counts it, U+FEFF included) is
refused too (``"   "`` names nothing).

:data:`IDENTIFIER_PATTERN` says the same thing as a regular expression that reads alike in
Python and in ECMA-262 (JSON Schema), so the published OpenAPI schema and the check agree and a
client generated from it never builds a value the API refuses.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any, Final

from bson import ObjectId
from bson.errors import InvalidId
from pydantic import AfterValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

# (first, last) code points refused anywhere in an identifier; see the module docstring for why.
_FORBIDDEN_RANGES: Final = (
    (0x0000, 0x001F),  # C0 controls
    (0x007F, 0x009F),  # DEL and C1 controls
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x200E, 0x200F),  # LEFT-TO-RIGHT / RIGHT-TO-LEFT MARK
    (0x2028, 0x2029),  # LINE / PARAGRAPH SEPARATOR
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2066, 0x2069),  # bidi isolates
)
_FORBIDDEN_CLASS: Final = "".join(
    f"\\u{first:04x}" if first == last else f"\\u{first:04x}-\\u{last:04x}"
    for first, last in _FORBIDDEN_RANGES
)
# Whitespace, spelt out: `\s` is not one set in both engines. ECMA-262's holds U+FEFF (which
# Python's does not), so "\ufeff" alone was blank to a client and an identifier to the API.
# This is ECMA-262's WhiteSpace and LineTerminator; the rest of Python's `\s` (U+001C-U+001F,
# U+0085) is forbidden anyway.
_BLANK_CLASS: Final = (
    "\\t\\n\\u000b\\f\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
)
# Any allowed characters, at least one of them not whitespace.
IDENTIFIER_PATTERN: Final = (
    f"^[^{_FORBIDDEN_CLASS}]*[^{_FORBIDDEN_CLASS}{_BLANK_CLASS}][^{_FORBIDDEN_CLASS}]*$"
)

# Surrogates are refused as well but are not in the published pattern: they are not characters
# (a JSON text carrying a lone one is not valid Unicode, RFC 8259 section 8.2), and regex engines
# that read patterns as Unicode (Rust's, JavaScript's with the u flag) refuse to compile them.
_FORBIDDEN: Final = re.compile(f"[{_FORBIDDEN_CLASS}\\ud800-\\udfff]")
_IDENTIFIER: Final = re.compile(IDENTIFIER_PATTERN)


def check_identifier(value: str) -> str:
    """Return ``value`` in Unicode NFC if it is a usable identifier, else raise a pydantic error.

    Raises ``PydanticCustomError`` of type ``forbidden_character`` (naming the first offending
    code point and its index) or ``blank``; in a request model pydantic turns it into a 422 that
    names the field. The check reads the value as sent (as the published pattern does); what is
    stored is its NFC form, so canonically equivalent spellings (``"cafe\u0301"``, ``"caf\u00e9"``)
    are one user or one SKU everywhere after. Nothing is stripped, case-folded or width-folded:
    NFC only joins spellings that are the same text.
    """
    found = _FORBIDDEN.search(value)
    if found is not None:
        raise PydanticCustomError(
            "forbidden_character",
            "must not contain control, bidirectional-formatting or line-separator characters "
            "(found U+{code_point} at index {index})",
            {"code_point": f"{ord(found.group()):04X}", "index": found.start()},
        )
    # fullmatch, not match: `$` also matches before a trailing newline.
    if _IDENTIFIER.fullmatch(value) is None:
        raise PydanticCustomError("blank", "must not be empty or only whitespace")
    return unicodedata.normalize("NFC", value)


@dataclass(frozen=True)
class _PublishPattern:
    """Adds :data:`IDENTIFIER_PATTERN` to the field's JSON schema, keeping its length bounds."""

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema: dict[str, Any] = handler(schema)
        json_schema["pattern"] = IDENTIFIER_PATTERN
        return json_schema


# For the field's description (a pattern cannot say it; a field's own description replaces any
# the type sets, so each Identifier field states it): how the API stores what it accepted.
IDENTIFIER_NORMALISATION: Final = (
    "Stored and answered in Unicode NFC: canonically equivalent spellings (e followed by U+0301 "
    "COMBINING ACUTE ACCENT, and U+00E9) are one identifier."
)


# Use as a field type (length bounds stay with the field: ``Field(min_length=1, max_length=64)``).
Identifier = Annotated[str, AfterValidator(check_identifier), _PublishPattern()]


# An ObjectId as a client may spell it: ObjectId() reads hex in either case, so this pattern (for
# a published schema) accepts both; :func:`parse_object_id` makes the one stored spelling of it.
OBJECT_ID_PATTERN: Final = "^[0-9a-fA-F]{24}$"


def parse_object_id(text: str) -> ObjectId | None:
    """The ObjectId that ``text`` spells (24 hex characters, either case), or None.

    ``str()`` of the result is the canonical spelling (lower-case hex), the one the database
    stores and every event, key and log carries. Turn a client's text into it where it enters,
    once: ``"6B13..."`` and ``"6b13..."`` are one order, but as strings they hash to other relay
    slots and Kafka partitions and miss each other in every lookup by string.
    """
    try:
        return ObjectId(text)
    except (InvalidId, TypeError):
        return None


__all__ = [
    "IDENTIFIER_NORMALISATION",
    "IDENTIFIER_PATTERN",
    "OBJECT_ID_PATTERN",
    "Identifier",
    "check_identifier",
    "parse_object_id",
]
